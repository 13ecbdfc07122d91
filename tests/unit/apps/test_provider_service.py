"""The provider service's lifecycle without a node: `stop()` cancels `run` (from a signal handler,
another thread or before it started), and no worker process is left behind."""

from __future__ import annotations

import threading

import trio

from ogpu_node.apps.provider import Provider, ProviderConfig
from ogpu_node.crypto import derive_dev_accounts

KEY = derive_dev_accounts(2)[1].private_key


def provider(tmp_path) -> Provider:
    return Provider(ProviderConfig(rpc_url="http://127.0.0.1:9", private_key=KEY, datadir=tmp_path))


def test_a_stop_before_the_start_ends_run_at_once(tmp_path):
    app = provider(tmp_path)
    app.stop()
    trio.run(app.run)  # returns: cancelled before it measured or registered anything
    assert app.resources is None and app.council_worker.pid is None


def test_a_stop_from_another_thread_cancels_the_running_service(tmp_path):
    app = provider(tmp_path)
    done = threading.Event()

    def serve() -> None:
        trio.run(app.run)
        done.set()

    thread = threading.Thread(target=serve)
    thread.start()
    while app._token is None:  # noqa: SLF001 — the loop is up once it holds its token
        done.wait(0.01)
    app.stop()
    thread.join(60)
    assert done.is_set() and app.council_worker.pid is None  # the measuring worker was closed
