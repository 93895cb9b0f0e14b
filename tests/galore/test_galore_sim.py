"""`lowprec simulate --optimizer`: runs, reports measured state bytes, GaLore's are smaller."""

import json

import pytest

from lowprec.cli import main


def test_simulate_optimizers_reports_state_bytes(tmp_path, capsys):
    assert main(["simulate", "--optimizer", "adamw", "galore", "galore-lowbit", "--steps", "6", "--batch-size", "4",
                 "--seq-len", "16", "--galore-gap", "3", "--no-progress", "--out", str(tmp_path)]) == 0
    rows = {r["optimizer"]: r for r in json.loads((tmp_path / "simulate_optimizers.json").read_text())["summary"]}
    assert rows["galore"]["state_bytes"] < rows["adamw"]["state_bytes"]
    assert rows["galore-lowbit"]["state_bytes"] < rows["galore"]["state_bytes"]
    assert "state KiB" in capsys.readouterr().out


def test_unknown_optimizer_and_mixed_modes_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown optimizers"):
        main(["simulate", "--optimizer", "sgd", "--no-progress", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["simulate", "--optimizer", "adamw", "--sparse", "ast", "--no-progress", "--out", str(tmp_path)])
