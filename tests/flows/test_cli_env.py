"""What the `etl` command sets up before Prefect reads its settings."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_temporary_api_gets_time_for_its_first_start_on_a_new_machine(tmp_path) -> None:
    """Without PREFECT_API_URL, `etl` starts a temporary local API. Its first start on a machine creates
    and migrates Prefect's database, which took ~25 s here: past Prefect's 20 s default, so `make demo`
    failed on a fresh machine. The CLI raises the limit before Prefect loads its settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    code = ("import flows.cli\n"
            "from prefect.settings import get_current_settings\n"
            "s = get_current_settings()\n"
            "print(s.server.ephemeral.startup_timeout_seconds, s.server.analytics_enabled)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["180", "False"]
