"""The target check (tasks/guard.py) tells two servers on one host apart: the binlog tests' private
server and the machine's server share a host name, so only the servers themselves can say."""
from __future__ import annotations

import pytest

from tasks.connections import EngineUrls
from tasks.errors import ConfigError
from tasks.guard import check_targets
from tests.conftest import _mysql_url


def test_the_same_database_name_on_another_server_is_a_replica_of_its_own(bl_env) -> None:  # noqa: ANN001
    bl_env.source_sql("CREATE TABLE patient (PatNum INT PRIMARY KEY); INSERT INTO patient VALUES (1)")
    # Production `X` on one server, its replica `X` on another (the usual two-server setup): accepted.
    other = EngineUrls(source=bl_env.source_url, replica=_mysql_url(bl_env.source_db), analytics=bl_env.analytics_url)
    found = check_targets(other, pg_schema="raw")
    assert not found.same_server and found.source.port != found.replica.port
    # The same name on the same server (spelled `localhost`) is the source itself.
    same = EngineUrls(source=bl_env.source_url, replica=bl_env.source_url.replace("@127.0.0.1:", "@localhost:"),
                      analytics=bl_env.analytics_url)
    with pytest.raises(ConfigError, match="names the source database itself"):
        check_targets(same, pg_schema="raw")
