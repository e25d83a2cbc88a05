"""Resume rules without Ray: which spec changes are refused, and the state signature that
keeps `--resume` from unpickling a folder this user did not write."""

from __future__ import annotations

import pytest

from helpers import tiny_spec
from scrutable.errors import UserError
from scrutable.sweep import trust
from scrutable.sweep.resume import check_compatible, differing_fields
from scrutable.sweep.spec import spec_from_mapping

BASE = tiny_spec(trials=4)


def spec(**changes):
    return spec_from_mapping({**BASE, **changes}, "t.yaml")


def test_only_concurrency_and_storage_may_change(tmp_path):
    assert differing_fields(spec(), spec(concurrency=7, storage=str(tmp_path))) == []
    assert differing_fields(spec(), spec(method="soft_prompt", trials=5, training={"steps": 3})) == [
        "method",
        "training.steps",
        "trials",
    ]
    with pytest.raises(UserError, match=r"\(trials differ\).*only concurrency, storage, local_dir may change"):
        check_compatible(spec(), spec(trials=8), tmp_path)


def test_signed_state_verifies_and_any_change_or_other_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "mine.key"))
    tune_dir = tmp_path / "sweep" / "tune"
    (tune_dir / "trial_0").mkdir(parents=True)
    (tune_dir / "experiment_state-x.json").write_text("{}")
    (tune_dir / "trial_0" / "params.pkl").write_bytes(b"pickle")
    with pytest.raises(UserError, match="not written by you"):
        trust.verify(tune_dir)  # no key yet: nothing was signed, and verify creates none
    assert not (tmp_path / "mine.key").exists()
    trust.sign(tune_dir)
    assert (tmp_path / "mine.key").stat().st_mode & 0o777 == 0o600
    trust.verify(tune_dir)

    (tune_dir / "trial_0" / "params.pkl").write_bytes(b"crafted")  # a pickle swapped in
    with pytest.raises(UserError, match=r"not signed by you \(trial_0/params.pkl\)"):
        trust.verify(tune_dir)
    staging = tmp_path / "staging"  # Ray's driver staging folder: signed there, copied later
    (staging / "trial_0").mkdir(parents=True)
    (staging / "experiment_state-x.json").write_text('{"newer": 1}')
    trust.sign(tune_dir, (staging,))
    (tune_dir / "experiment_state-x.json").write_text('{"newer": 1}')  # Ray's background copy lands
    (tune_dir / "trial_0" / "params.pkl").write_bytes(b"pickle")  # an earlier signed version is fine
    trust.verify(tune_dir)
    (tune_dir / "searcher-state-x.pkl").write_bytes(b"new file")  # a pickle added
    with pytest.raises(UserError, match="not signed by you"):
        trust.verify(tune_dir)
    manifest = tune_dir / trust.DIGEST_FILE
    manifest.write_text(manifest.read_text().replace('"files": {', '"files": {"searcher-state-x.pkl": ["0"], ', 1))
    with pytest.raises(UserError, match="no state signature of yours"):  # an edited manifest
        trust.verify(tune_dir)

    trust.sign(tune_dir)
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "someone-else.key"))
    (tmp_path / "someone-else.key").write_bytes(b"another user's key")
    with pytest.raises(UserError, match="no state signature of yours"):
        trust.verify(tune_dir)
