"""CLI commands of the server side: run it, bootstrap users and tokens, log in, audit.

`user create`, `token create` and `audit verify` work directly on the server's data
directory (or database URL): whoever can read that is already its administrator.
"""

from __future__ import annotations

import getpass
import platform
import secrets
import sys
from typing import Any

import click

from dockvisor.cli.backends import ApiClient
from dockvisor.cli.credentials import save_token
from dockvisor.errors import InvalidInput

__all__ = ["audit", "login", "serve", "token", "user"]


def _settings(
    ctx: click.Context,
    default_host: tuple[str, str] | None = None,
    trusted_proxies: tuple[str, ...] = (),
) -> Any:
    from dockvisor.services.runtime import Settings

    obj = ctx.obj
    return Settings.from_environment(
        data=obj.data,
        database_url=obj.database_url,
        default_host=default_host,
        trusted_proxies=trusted_proxies,
    )


def _database(ctx: click.Context) -> Any:
    """The server's database, migrated, without starting a server. The data directory
    and database files are made (or narrowed to) 0700 and 0600, as a server start does."""
    from dockvisor.services.access import ensure_builtin_roles
    from dockvisor.services.runtime import prepare_data_dir, tell
    from dockvisor.store.db import Database

    settings = _settings(ctx)
    notices = prepare_data_dir(settings.data_dir)
    db = Database(settings.database_url)
    tell(notices + db.notices)
    db.migrate()
    with db.session() as session:
        ensure_builtin_roles(session)
    return db


def _audit_log(ctx: click.Context, db: Any) -> Any:
    """The server's audit log, ready to append to (key and head file as a server start
    leaves them)."""
    from dockvisor.services.audit import AuditLog
    from dockvisor.services.runtime import tell

    log = AuditLog(db, _settings(ctx).audit_files)
    tell(log.prepare())
    return log


def _read_password(from_stdin: bool, prompt: str = "Password") -> str:
    password = sys.stdin.readline().rstrip("\n") if from_stdin else getpass.getpass(f"{prompt}: ")
    if not password:
        raise InvalidInput("no password given")
    return password


@click.command()
@click.option("--listen", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--reconcile-every",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds between full inventory reconciles (events cover the rest).",
)
@click.option(
    "--gateway-port",
    default=8081,
    show_default=True,
    type=int,
    help="Port of the engine gateway, where the stock docker CLI reaches VM engines "
    "through dockvisor (0: no gateway).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDR",
    help="A reverse proxy (IP address or network) whose X-Forwarded-For names the "
    "client; repeatable (env DOCKVISOR_TRUSTED_PROXIES). None by default: the client "
    "is the TCP peer, whatever the headers say.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    listen: str,
    port: int,
    reconcile_every: float,
    gateway_port: int,
    trusted_proxies: tuple[str, ...],
) -> None:
    """Run the dockvisor server (REST API under /api/v1) and its engine gateway.

    On first start it registers the hypervisor given by --hypervisor as host "local".
    """
    import uvicorn

    from dockvisor.api.app import create_app
    from dockvisor.api.docker_routes import ServerGatewayPolicy
    from dockvisor.api.engine_gateway import EngineGateway
    from dockvisor.api.security import client_address_options
    from dockvisor.log import configure
    from dockvisor.services.runtime import ControlPlane

    configure()  # the server's log: JSON lines on stderr
    settings = _settings(ctx, default_host=("local", ctx.obj.uri), trusted_proxies=trusted_proxies)
    settings = type(settings)(**{**settings.__dict__, "reconcile_every": reconcile_every})
    cp = ControlPlane(settings)
    cp.start()
    gateway = None
    if gateway_port:
        gateway = EngineGateway(ServerGatewayPolicy(cp), host=listen, port=gateway_port)
        gateway.start()
        host = f"[{listen}]" if ":" in listen else listen
        cp.engine_gateway_url = f"tcp://{host}:{gateway.port}"
    click.echo(
        f"dockvisor {settings.data_dir} listening on http://{listen}:{port}/api/v1"
        + (f", docker CLI gateway on {cp.engine_gateway_url}" if gateway else "")
        + (
            f"; X-Forwarded-For believed from {', '.join(settings.trusted_proxies)} only"
            if settings.trusted_proxies
            else ""
        ),
        err=True,
    )
    config = uvicorn.Config(
        create_app(cp),
        host=listen,
        port=port,
        log_level="warning",
        # Streams end by themselves at once (cp.stopping); whatever still runs after
        # this many seconds is cancelled, so a stop never waits on a client.
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        **client_address_options(settings.trusted_proxies),
    )
    try:
        _Server(config, cp).run()
    finally:
        if gateway is not None:
            gateway.stop()
        cp.stop()


SHUTDOWN_GRACE = 3  # seconds: a SIGTERM ends `serve` well within 10 s, streams or not


def _Server(config: Any, cp: Any) -> Any:  # noqa: N802 - a class, made where uvicorn is loaded
    """uvicorn's server, which also tells the control plane it is stopping: event
    streams, followed logs and waits end then, instead of holding the stop up."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            cp.begin_stopping()
            super().handle_exit(sig, frame)

    return Server(config)


@click.group()
def user() -> None:
    """Users of the server (works on its data directory)."""


@user.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Give the user the Admin role on /.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def user_create(ctx: click.Context, name: str, admin: bool, password_stdin: bool) -> None:
    """Create a user (the first admin, typically)."""
    from dockvisor.services import identity
    from dockvisor.store.models import AclEntryRow

    password = _read_password(password_stdin)
    db = _database(ctx)
    with db.session() as session:
        row = identity.create_user(session, name, password)
        if admin:
            session.add(
                AclEntryRow(
                    subject_kind="user", subject_id=row.id, path="/", role="Admin", propagate=True
                )
            )
        user_id = row.id
    _audit_log(ctx, db).append(
        "local-shell", "user.create", f"user:{name}", "ok", "admin" if admin else ""
    )
    _emit(
        ctx,
        {"id": user_id, "name": name, "admin": admin},
        f"user {name} created{' (Admin on /)' if admin else ''}",
    )


@user.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def user_password(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a user's password."""
    from dockvisor.services import identity

    password = _read_password(password_stdin)
    db = _database(ctx)
    with db.session() as session:
        identity.set_password(session, identity.user_by_name(session, name), password)
    _audit_log(ctx, db).append("local-shell", "user.password", f"user:{name}", "ok")
    _emit(ctx, {"name": name}, f"password of {name} set")


@click.group()
def token() -> None:
    """API tokens (works on the server's data directory)."""


@token.command("create")
@click.argument("token_name")
@click.option("--user", "user_name", required=True, help="Whose token it is.")
@click.option("--expires-in-days", type=float, help="Expire after this many days.")
@click.pass_context
def token_create(
    ctx: click.Context, token_name: str, user_name: str, expires_in_days: float | None
) -> None:
    """Create an API token and print it (shown once)."""
    from dockvisor.services import identity
    from dockvisor.services.admin import token_expiry

    db = _database(ctx)
    with db.session() as session:
        owner = identity.user_by_name(session, user_name)
        _, secret = identity.create_token(session, owner, token_name, token_expiry(expires_in_days))
    _audit_log(ctx, db).append(
        "local-shell", "token.create", f"token:{user_name}/{token_name}", "ok"
    )
    _emit(ctx, {"name": token_name, "user": user_name, "token": secret}, secret)


@click.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
@click.option(
    "--head",
    "heads",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A head file to check against (repeatable: the head files of processes that "
    "write to one database are merged) [the data directory's].",
)
@click.pass_context
def audit_verify(ctx: click.Context, heads: tuple[str, ...]) -> None:
    """Check the audit log against its key and head file (read only).

    Exit 0: intact. Exit 1: tampered (an entry changed, inserted or removed; the entry
    id and the reason are printed). Exit 3: it cannot be confirmed (entries not in the
    head file yet, no head file, the key missing or not the head file's).
    """
    from pathlib import Path

    from dockvisor.services.audit import TAMPERED, AuditLog

    report = AuditLog(_database(ctx), _settings(ctx).audit_files).verify([Path(h) for h in heads])
    if report.ok:
        human = f"{report.entries} entries, chain intact"
        if report.reason:
            human += f" ({report.reason})"
        elif report.keyed_from is not None and report.keyed_from > 1:
            human += f"; entries before id {report.keyed_from} sealed by the keyed chain"
    elif report.condition == TAMPERED:
        at = f" at entry {report.broken_at}" if report.broken_at is not None else ""
        human = f"chain broken{at}: {report.reason}"
    else:
        at = f" (entry {report.broken_at})" if report.broken_at is not None else ""
        human = f"{report.entries} entries, not confirmed{at}: {report.condition}: "
        human += report.reason
    _emit(ctx, report.__dict__, human)
    if not report.ok:
        sys.exit(1 if report.condition == TAMPERED else 3)


@click.command()
@click.option("--user", "user_name", help="User name [your login name].")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def login(ctx: click.Context, user_name: str | None, password_stdin: bool) -> None:
    """Log in to a server (--server) and keep an API token for the CLI."""
    server = ctx.obj.server
    if not server:
        raise InvalidInput("give the server: dockvisor --server URL login")
    name = user_name or getpass.getuser()
    password = _read_password(password_stdin, f"Password for {name} on {server}")
    api = ApiClient(server, None)
    session = api.request("POST", "/login", json={"name": name, "password": password})
    csrf = session["csrf_token"]
    token_name = f"cli-{platform.node()[:30] or 'host'}-{secrets.token_hex(3)}"
    created = api.request(
        "POST", "/tokens", json={"name": token_name}, headers={"X-CSRF-Token": csrf}
    )
    path = save_token(server, created["token"])
    _emit(
        ctx,
        {"server": server, "user": name, "token_name": token_name, "saved_in": str(path)},
        f"logged in to {server} as {name}; token {token_name} saved in {path}",
    )


def _emit(ctx: click.Context, data: dict[str, Any], human: str) -> None:
    ctx.obj.emit(data, human)


@click.group("resource-set")
def resource_set() -> None:
    """Resource sets (quotas) of a server (needs --server)."""


@resource_set.command("list")
@click.pass_context
def resource_set_list(ctx: click.Context) -> None:
    """List the resource sets you can see, with their usage."""
    sets = _api(ctx).request("GET", "/resource-sets")
    lines = [f"{'ID':<4} {'NAME':<16} {'VMS':>9} {'VCPUS':>9} {'MEMORY (MiB)':>15}"]
    for s in sets:
        lim, use = s["limits"], s["usage"]
        mib = (lim["memory"] or 0) // 2**20
        lines.append(
            f"{s['id']:<4} {s['name']:<16} {use['vms']:>4}/{lim['vms'] or '-':<4} "
            f"{use['vcpus']:>4}/{lim['vcpus'] or '-':<4} "
            f"{use['memory'] // 2**20:>7}/{mib or '-':<7}"
        )
    _emit(ctx, {"resource_sets": sets}, "\n".join(lines))


@resource_set.command("recompute")
@click.pass_context
def resource_set_recompute(ctx: click.Context) -> None:
    """Re-read every VM from the hypervisors and report how usage drifted (admin)."""
    report = _api(ctx).request("POST", "/resource-sets/recompute")
    drift = report["drift"]
    human = [
        f"added {len(report['added'])}, removed {len(report['removed'])}, "
        f"updated {len(report['updated'])} VMs"
    ]
    human += [f"set {k}: {v['before']} -> {v['after']}" for k, v in drift.items()] or ["no drift"]
    _emit(ctx, report, "\n".join(human))


def _api(ctx: click.Context) -> ApiClient:
    import os

    from dockvisor.cli.credentials import token_for

    server = ctx.obj.server
    if not server:
        raise InvalidInput("this command works through a server: add --server URL")
    return ApiClient(server, os.environ.get("DOCKVISOR_TOKEN") or token_for(server))
