"""The secret key file is made once, whoever races to make it: processes, or threads of one process.

Found in the drop-in tests (issue 11): the API's inline runs settle in threads of one server, and the
first settlement seals a signing key. Each thread staged the key file under the same temporary name
(the process id alone); one moved it into place, the others found it gone and the run raised, leaving
its batch dispatching with every line answered and nothing settled.
"""

from __future__ import annotations

import threading
from pathlib import Path

from batchrouter.access import vault


def test_threads_racing_to_make_the_key_file_all_succeed_and_read_the_same_key(tmp_path: Path) -> None:
    database = str(tmp_path / "fresh.duckdb")
    barrier = threading.Barrier(16)
    got: list[list[str]] = []
    errors: list[BaseException] = []

    def make() -> None:
        barrier.wait()
        try:
            got.append(vault._file_keys(database))
        except BaseException as exc:  # noqa: BLE001 - the test reports what each thread met
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    assert len(got) == 16 and len({tuple(keys) for keys in got}) == 1
    assert vault.key_file(database).read_text().split() == got[0]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no staged file left behind
    assert oct(vault.key_file(database).stat().st_mode & 0o777) == "0o600"
