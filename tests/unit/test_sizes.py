import pytest

from dockvisor.domain.sizes import GiB, KiB, MiB, TiB, format_size, parse_size
from dockvisor.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * MiB),
        ("1GiB", GiB),
        ("1.5G", 1610612736),
        ("2g", 2 * GiB),
        ("1536M", 1536 * MiB),
        ("1T", TiB),
        ("4k", 4 * KiB),
        ("100B", 100),
    ],
)
def test_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "size"),
    [("1GB", 10**9), ("500MB", 500 * 10**6), ("2kb", 2000), ("1TB", 10**12)],
)
def test_decimal_units(text, size):
    assert parse_size(text) == size


def test_whitespace_and_case_do_not_matter():
    assert parse_size("  512 MiB ") == 512 * MiB
    assert parse_size("1gib") == parse_size("1GIB") == GiB


@pytest.mark.parametrize("text", ["1024", " 1024 ", "1.5"])
def test_bare_number_is_refused_with_a_suggested_unit(text):
    with pytest.raises(InvalidInput, match=rf"for example {text.strip()}MiB"):
        parse_size(text)


def test_error_names_what_was_being_parsed():
    with pytest.raises(InvalidInput, match=r"^memory '1024' needs a unit"):
        parse_size("1024", what="memory")


def test_unknown_unit_is_named():
    with pytest.raises(InvalidInput, match=r"unknown unit 'XB'"):
        parse_size("3XB")


@pytest.mark.parametrize("text", ["", "lots", "GiB", "-1GiB", "1,5G", "1e3MiB", "1 G i B"])
def test_garbage_is_not_a_size(text):
    with pytest.raises(InvalidInput, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["1.5B", "0.1K", "1.0000001M"])
def test_fractional_bytes_are_refused(text):
    with pytest.raises(InvalidInput, match="not a whole number of bytes"):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (GiB, "1GiB"),
        (1610612736, "1.5GiB"),
        (512 * MiB, "512MiB"),
        (1280 * MiB, "1.25GiB"),
        (100 * GiB, "100GiB"),
        (2 * TiB, "2TiB"),
        (1536, "1.5KiB"),
        (1023, "1023B"),
        (0, "0B"),
    ],
)
def test_format_exact_sizes(size, text):
    assert format_size(size) == text


def test_format_rounds_inexact_sizes_to_one_decimal():
    assert format_size(25276502016) == "23.5GiB"
    assert format_size(GiB + 1) == "1.0GiB"


@pytest.mark.parametrize(
    "size", [1, 1023, KiB, 1536, 512 * MiB, GiB, 1610612736, 1280 * MiB, 100 * GiB, 3 * TiB]
)
def test_parse_reads_back_what_format_prints(size):
    assert parse_size(format_size(size)) == size
