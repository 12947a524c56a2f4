"""The test server must not disturb the machine's MariaDB.

A MariaDB server (mariadb-install-db's bootstrap server too) deletes every `#sql*` file in its tmpdir
as it starts; in /tmp those are the machine server's live temporary tables, and queries there failed
with "Error on delete of '/tmp/#sql-temptable-….MAI'" whenever a binlog test or the bench's binlog
stage started a server. tests/binlog_server.start() gives both its own tmpdir.
"""
from __future__ import annotations

from tests.binlog.conftest import FOREIGN_TMP_FILE
from tests.binlog_server import BinlogServer


def test_starting_the_test_server_leaves_the_machine_servers_temporary_files(binlog_server: BinlogServer) -> None:
    assert FOREIGN_TMP_FILE == {"survived": True}, "starting the binlog test server deleted a #sql* file in /tmp"
