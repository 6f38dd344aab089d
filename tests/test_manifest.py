"""Damaged or hostile checkpoints and model files are refused before anything in them is loaded.

Unit tests of `sepsis_rl.common.manifest` on small folders, then real artifacts: a tiny real DQN
run on SepsisEnv (one iteration, a few seconds) and a real classifier model folder (logistic
regression only), damaged in the ways files get damaged or replaced. The real `sepsis-rl`
command runs in a subprocess for the commands a user would point at such a folder; each must exit
2, name the file, leave its output untouched, and never run the code a crafted pickle carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepsis_rl.cli import app
from sepsis_rl.common.manifest import (
    KEY_FILE_ENV,
    MANIFEST_FILE,
    ManifestError,
    configured_key,
    verify_manifest,
    write_manifest,
)

SEPSIS_RL = Path(sys.executable).parent / "sepsis-rl"
KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
MODULE_STATE = Path("learner_group", "learner", "rl_module", "default_policy", "module_state.pkl")
PATIENT = {
    "HR": 112, "O2Sat": 90, "SBP": 88, "DBP": 50, "MAP": 62.7, "Resp": 26, "Temp": 38.6,
    "Lactate": 3.1, "Age": 71,
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    """Every test starts without a manifest key; the ones about keys set it themselves."""
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def _folder(root: Path) -> Path:
    """A small folder with a pickle in a sub-folder, as checkpoints have."""
    (root / "sub").mkdir(parents=True)
    (root / "options.yaml").write_text("env: SepsisEnv-v0\n")
    (root / "sub" / "state.pkl").write_bytes(pickle.dumps({"weights": list(range(100))}))
    return root


def _marker_pickle(marker: Path) -> bytes:
    """A pickle that creates `marker` when it is loaded: what a hostile file could do."""

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Payload())


def _key_file(tmp_path: Path, key: bytes, name: str = "manifest.key") -> Path:
    path = tmp_path / name
    path.write_bytes(key + b"\n")
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    """The sha256 of every file under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEPSIS_RL), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})},
    )


def _said(result) -> str:
    """What a command printed, line breaks of the console's wrapping removed."""
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    return "".join(output.split())


def _names(text: str) -> str:
    return "".join(text.split())


# -- the manifest ---------------------------------------------------------------------------------


def test_a_folder_verifies_against_the_manifest_written_with_it(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    path = write_manifest(folder, "test-kind")
    assert path == folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    assert set(manifest["files"]) == {"options.yaml", "sub/state.pkl"}
    state = (folder / "sub" / "state.pkl").read_bytes()
    assert manifest["files"]["sub/state.pkl"] == {
        "bytes": len(state),
        "sha256": hashlib.sha256(state).hexdigest(),
    }
    assert "signature" not in manifest
    assert verify_manifest(folder, "test-kind") == ["options.yaml", "sub/state.pkl"]


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:20]), "it has 20 bytes"),  # truncated
        (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "damaged or was replaced"),
    ],
    ids=["truncated", "one-byte-changed"],
)
def test_a_changed_file_is_refused_naming_it_and_what_was_expected(
    tmp_path: Path, damage, said: str
) -> None:
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "test-kind")
    state = folder / "sub" / "state.pkl"
    expected = hashlib.sha256(state.read_bytes()).hexdigest()
    damage(state)
    with pytest.raises(ManifestError) as err:
        verify_manifest(folder, "test-kind")
    message = str(err.value)
    assert str(state) in message and said in message
    assert f"expected {len(pickle.dumps({'weights': list(range(100))}))} bytes" in message
    assert expected[:16] in message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "test-kind")
    (folder / "options.yaml").unlink()
    with pytest.raises(ManifestError, match=r"options\.yaml is missing \(expected \d+ bytes"):
        verify_manifest(folder, "test-kind")


def test_a_file_added_after_the_manifest_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "test-kind")
    (folder / "sub" / "extra.pkl").write_bytes(pickle.dumps(1))
    with pytest.raises(ManifestError, match=r"sub/extra\.pkl is not listed in the manifest"):
        verify_manifest(folder, "test-kind")


def test_a_folder_without_manifest_is_refused_with_the_hint(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    with pytest.raises(ManifestError, match=r"has no MANIFEST\.json.*train it again"):
        verify_manifest(folder, "test-kind", missing_hint="train it again")


def test_a_manifest_of_another_kind_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "classifier")
    with pytest.raises(ManifestError, match="kind 'classifier', expected 'checkpoint'"):
        verify_manifest(folder, "checkpoint")


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "test-kind")
    (folder / "link.pkl").symlink_to(folder / "sub" / "state.pkl")
    with pytest.raises(ManifestError, match=r"link\.pkl is a symbolic link"):
        verify_manifest(folder, "test-kind")


def test_a_manifest_listing_a_path_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    path = write_manifest(folder, "test-kind")
    manifest = json.loads(path.read_text())
    manifest["files"]["../elsewhere.pkl"] = manifest["files"]["options.yaml"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="not a path inside the folder"):
        verify_manifest(folder, "test-kind")


# -- the HMAC key ---------------------------------------------------------------------------------


def test_without_a_key_no_signature_is_needed(tmp_path: Path) -> None:
    unsigned = _folder(tmp_path / "unsigned")
    write_manifest(unsigned, "test-kind")
    verify_manifest(unsigned, "test-kind")
    signed = _folder(tmp_path / "signed")
    write_manifest(signed, "test-kind", key=KEY)
    assert json.loads((signed / MANIFEST_FILE).read_text())["signature"]["value"]
    verify_manifest(signed, "test-kind")  # no key here: the digests are still checked


def test_with_a_key_the_signature_is_required(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "test-kind")
    with pytest.raises(ManifestError, match="is not signed, but a manifest key is configured"):
        verify_manifest(folder, "test-kind", key=KEY)


def test_a_signature_made_with_another_key_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "test-kind", key=OTHER_KEY)
    with pytest.raises(ManifestError, match="signature does not match"):
        verify_manifest(folder, "test-kind", key=KEY)
    verify_manifest(folder, "test-kind", key=OTHER_KEY)


def test_with_a_key_a_file_and_its_manifest_changed_together_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "f")
    path = write_manifest(folder, "test-kind", key=KEY)
    signature = json.loads(path.read_text())["signature"]
    (folder / "sub" / "state.pkl").write_bytes(pickle.dumps("replaced"))
    write_manifest(folder, "test-kind")  # the tamperer rewrites the manifest, without the key
    with pytest.raises(ManifestError, match="is not signed"):
        verify_manifest(folder, "test-kind", key=KEY)
    forged = json.loads(path.read_text())
    forged["signature"] = signature  # or keeps the old signature
    path.write_text(json.dumps(forged))
    with pytest.raises(ManifestError, match="signature does not match"):
        verify_manifest(folder, "test-kind", key=KEY)
    verify_manifest(folder, "test-kind")  # without the key the rewrite goes unnoticed


def test_the_manifest_records_the_source_commit_and_when_under_the_signature(
    tmp_path: Path,
) -> None:
    import subprocess
    from datetime import UTC, datetime

    from sepsis_rl.common.manifest import read_provenance
    from sepsis_rl.common.provenance import DIRTY_SUFFIX, short_commit, source_commit

    folder = _folder(tmp_path / "f")
    before = datetime.now(UTC).replace(microsecond=0)
    path = write_manifest(folder, "test-kind", key=KEY)
    recorded = read_provenance(folder)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
    ).stdout.strip()
    assert recorded["commit"] == source_commit()
    assert recorded["commit"].removesuffix(DIRTY_SUFFIX) == head
    assert short_commit(recorded["commit"]).startswith(head[:7])
    written = datetime.fromisoformat(recorded["written_at"].replace("Z", "+00:00"))
    assert before <= written <= datetime.now(UTC)
    forged = json.loads(path.read_text())
    forged["commit"] = "0" * 40  # the signature covers the record too
    path.write_text(json.dumps(forged))
    with pytest.raises(ManifestError, match="signature does not match"):
        verify_manifest(folder, "test-kind", key=KEY)
    assert read_provenance(tmp_path / "nothing") == {"written_at": None, "commit": None}


def test_the_key_comes_from_the_file_the_environment_names(tmp_path: Path, monkeypatch) -> None:
    assert configured_key() is None
    monkeypatch.setenv(KEY_FILE_ENV, str(_key_file(tmp_path, KEY)))
    assert configured_key() == KEY
    folder = _folder(tmp_path / "f")
    write_manifest(folder, "test-kind")  # signed with the configured key
    verify_manifest(folder, "test-kind", key=KEY)
    with pytest.raises(ManifestError, match="signature does not match"):
        verify_manifest(folder, "test-kind", key=OTHER_KEY)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "absent.key"))
    with pytest.raises(ManifestError, match=r"absent\.key: cannot read the manifest key file"):
        verify_manifest(folder, "test-kind")
    monkeypatch.setenv(KEY_FILE_ENV, str(_key_file(tmp_path, b"short", "short.key")))
    with pytest.raises(ManifestError, match="holds 5 bytes"):
        write_manifest(folder, "test-kind")


# -- a real checkpoint ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tiny_sepsis_run: Path) -> Path:
    """The session's tiny real DQN run (tests/conftest.py)."""
    return tiny_sepsis_run


@pytest.fixture()
def checkpoint(run: Path, tmp_path: Path) -> Path:
    """A copy of the run's last checkpoint, free to damage."""
    copy = tmp_path / "checkpoint"
    shutil.copytree(run / "checkpoints" / "last", copy)
    return copy


@pytest.fixture()
def patient(tmp_path: Path) -> Path:
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(PATIENT))
    return path


def test_a_checkpoint_lists_every_file_rllib_and_we_wrote(run: Path) -> None:
    from training.rl.policy import load_policy
    from training.rl.run_dir import CHECKPOINT_KIND

    last = run / "checkpoints" / "last"
    listed = verify_manifest(last, CHECKPOINT_KIND)
    on_disk = {p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {MANIFEST_FILE}
    pickles = {name for name in listed if name.endswith(".pkl")}
    assert {
        "algorithm_state.pkl",
        "class_and_ctor_args.pkl",
        "replay_buffer.pkl",
        MODULE_STATE.as_posix(),
    } <= pickles
    assert len(pickles) > 10  # every component's class/ctor pickle and state
    assert "options.yaml" in listed and "rllib_checkpoint.json" in listed
    assert load_policy(last).q_values(_patient_observation()[None]).shape == (1, 8)


def _patient_observation():
    from training.rl.recommend import patient_observation

    return patient_observation(PATIENT)


def test_evaluate_refuses_a_truncated_module_state(checkpoint: Path, tmp_path: Path) -> None:
    state = checkpoint / MODULE_STATE
    state.write_bytes(state.read_bytes()[:1000])
    out = tmp_path / "eval"
    result = _run_cli("evaluate", "--checkpoint", str(checkpoint), "--out", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    said = _said(result)
    assert _names(f"{state} is damaged or was replaced: it has 1000 bytes") in said
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_recommend_never_runs_a_crafted_module_state(
    checkpoint: Path, patient: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = _marker_pickle(marker)
    pickle.loads(payload)  # the payload is live: loading it creates the marker
    assert marker.exists()
    marker.unlink()
    (checkpoint / MODULE_STATE).write_bytes(payload)
    result = _run_cli("recommend", "--checkpoint", str(checkpoint), "--patient", str(patient))
    assert result.returncode == 2, result.stderr[-2000:]
    assert _names(str(checkpoint / MODULE_STATE)) in _said(result)
    assert not marker.exists()


def test_train_resume_never_runs_a_crafted_replay_buffer(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "pwned"
    buffer = copy / "checkpoints" / "last" / "replay_buffer.pkl"
    buffer.write_bytes(_marker_pickle(marker))
    before = _snapshot(copy)
    result = _run_cli("train", "--resume", "--out", str(copy), "--env-steps", "400")
    assert result.returncode == 2, result.stderr[-2000:]
    assert _names(f"{buffer} is damaged or was replaced") in _said(result)
    assert not marker.exists()
    assert _snapshot(copy) == before  # nothing written: refused before Ray started


def test_restore_checks_the_manifest_before_touching_the_algorithm(checkpoint: Path) -> None:
    """Tune trials and the study resume through `restore_checkpoint`, without the CLI's check."""
    from training.rl.run_dir import BUFFER_FILE, restore_checkpoint

    (checkpoint / BUFFER_FILE).write_bytes(pickle.dumps("another buffer"))
    untouched = object()  # any use of it would fail: verification must come first
    with pytest.raises(ManifestError, match=r"replay_buffer\.pkl is damaged"):
        restore_checkpoint(untouched, checkpoint)


def test_a_checkpoint_without_manifest_is_refused_with_what_to_do(checkpoint: Path) -> None:
    from training.rl.policy import load_policy
    from training.rl.run_dir import trust_checkpoint

    (checkpoint / MANIFEST_FILE).unlink()
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 2, result.output
    said = _said(result)
    assert _names(f"{checkpoint} has no MANIFEST.json") in said
    assert "Trainagain" in said and "trust_checkpoint(" in said
    trust_checkpoint(checkpoint)  # the explicit opt-in for a folder the user vouches for
    assert load_policy(checkpoint).options.env == "SepsisEnv-v0"


def test_a_folder_without_our_options_file_is_not_our_checkpoint(checkpoint: Path) -> None:
    (checkpoint / "options.yaml").unlink()
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 2, result.output
    assert "isnotacheckpointwrittenby`sepsis-rltrain`:itlacksoptions.yaml" in _said(result)


@pytest.mark.parametrize(
    ("text", "said"),
    [("env: 5\n", "env"), ("env: [unclosed\n", "notvalidYAML")],
    ids=["env-is-a-number", "not-yaml"],
)
def test_bad_options_are_refused_naming_the_options_file(
    checkpoint: Path, patient: Path, text: str, said: str
) -> None:
    from training.rl.run_dir import trust_checkpoint

    options = checkpoint / "options.yaml"
    options.write_text(text)
    command = ["recommend", "--checkpoint", str(checkpoint), "--patient", str(patient)]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 2, first.output
    assert _names(f"{options} is damaged or was replaced") in _said(first)
    # Past the manifest (someone rewrote it): the options themselves are refused.
    trust_checkpoint(checkpoint)
    for args in (command, ["evaluate", "--checkpoint", str(checkpoint)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert _names(str(options)) in _said(result) and said in _said(result)


def test_a_checkpoint_of_another_algorithm_is_refused(checkpoint: Path) -> None:
    """A PPO module where our DQN module was, our options file copied in."""
    import gymnasium as gym
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
        DefaultPPOTorchRLModule,
    )

    from training.rl.policy import load_policy
    from training.rl.run_dir import CheckpointError, trust_checkpoint

    module_dir = checkpoint / MODULE_STATE.parent
    space = gym.spaces.Box(-1.0, 1.0, (_patient_observation().shape[0],))
    shutil.rmtree(module_dir)
    ppo = DefaultPPOTorchRLModule(
        observation_space=space, action_space=gym.spaces.Discrete(8), model_config={}
    )
    ppo.save_to_path(str(module_dir))
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 2, result.output
    assert "doesnotmatchitsMANIFEST.json" in _said(result)
    trust_checkpoint(checkpoint)  # even vouched for, it is not the module options.yaml names
    with pytest.raises(CheckpointError, match="a DefaultPPOTorchRLModule, not the dqn module"):
        load_policy(checkpoint)


def test_with_a_key_an_unsigned_or_resigned_checkpoint_is_refused(
    checkpoint: Path, patient: Path, tmp_path: Path, monkeypatch
) -> None:
    from training.rl.policy import load_policy
    from training.rl.run_dir import CheckpointError, trust_checkpoint

    monkeypatch.setenv(KEY_FILE_ENV, str(_key_file(tmp_path, KEY)))
    command = ["recommend", "--checkpoint", str(checkpoint), "--patient", str(patient), "--json"]
    unsigned = CliRunner().invoke(app, command)
    assert unsigned.exit_code == 2, unsigned.output
    assert "isnotsigned,butamanifestkeyisconfigured" in _said(unsigned)

    trust_checkpoint(checkpoint)  # signed with the key: accepted
    assert CliRunner().invoke(app, command).exit_code == 0
    # A tamperer swaps the module for a crafted pickle and signs the manifest with their own key.
    marker = tmp_path / "pwned"
    (checkpoint / MODULE_STATE).write_bytes(_marker_pickle(marker))
    write_manifest(checkpoint, "sepsis-rl/rllib-checkpoint", key=OTHER_KEY)
    result = _run_cli(*command, env={KEY_FILE_ENV: str(tmp_path / "manifest.key")})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "signaturedoesnotmatch" in _said(result)
    assert not marker.exists()
    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(CheckpointError):  # without the key it would be loaded ...
        load_policy(checkpoint)
    assert marker.exists()  # ... and run: what the README's Security section warns about


# -- a real classifier model folder ---------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(prepared_dir, tmp_path_factory) -> Path:
    """The `model` folder of a real `classify` run: logistic regression without oversampling."""
    from training.classification.experiment import run_classification
    from training.classification.models import ClassifierSettings
    from training.classification.options import ClassifyConfig

    out = tmp_path_factory.mktemp("manifest_classify")
    config = ClassifyConfig(
        models=("logreg",),
        oversample=("none",),
        n_boot=100,
        fidelity=False,
        settings=ClassifierSettings(seed=3),
    )
    run_classification(prepared_dir, out, config)
    return out / "model"


@pytest.fixture()
def model(model_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_folder, copy)
    return copy


def test_a_model_folder_lists_the_model_and_its_description(model_folder: Path) -> None:
    from training.classification.model_file import MODEL_KIND, load_model

    assert verify_manifest(model_folder, MODEL_KIND) == ["best_model.joblib", "best_model.json"]
    assert load_model(model_folder).threshold >= 0


def test_classify_score_refuses_a_model_with_one_byte_changed(
    model: Path, prepared_dir: Path, tmp_path: Path
) -> None:
    joblib_file = model / "best_model.joblib"
    data = bytearray(joblib_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    joblib_file.write_bytes(bytes(data))
    out = tmp_path / "scores.csv"
    result = _run_cli(
        "classify-score",
        "--model",
        str(model),
        "--features",
        str(prepared_dir / "features.parquet"),
        "--out",
        str(out),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert _names(f"{joblib_file} is damaged or was replaced") in _said(result)
    assert not out.exists()


def test_a_crafted_model_is_never_loaded(model: Path, tmp_path: Path, monkeypatch) -> None:
    from training.classification.model_file import ModelFileError, load_model

    marker = tmp_path / "pwned"
    (model / "best_model.joblib").write_bytes(_marker_pickle(marker))
    with pytest.raises(ModelFileError, match=r"best_model\.joblib is damaged or was replaced"):
        load_model(model)
    (model / MANIFEST_FILE).unlink()
    with pytest.raises(ModelFileError, match=r"has no MANIFEST\.json.*sepsis-rl classify"):
        load_model(model)
    monkeypatch.setenv(KEY_FILE_ENV, str(_key_file(tmp_path, KEY)))
    write_manifest(model, "sepsis-rl/classifier-model", key=OTHER_KEY)
    with pytest.raises(ModelFileError, match="signature does not match"):
        load_model(model)
    assert not marker.exists()


def test_a_model_file_that_is_not_a_classifier_is_refused(model: Path) -> None:
    import joblib

    from training.classification.model_file import ModelFileError, load_model, trust_model_folder

    joblib.dump({"weights": [1, 2, 3]}, model / "best_model.joblib")
    trust_model_folder(model)  # past the manifest: the content itself is checked
    with pytest.raises(ModelFileError, match="holds a dict, expected the fitted imblearn Pipeline"):
        load_model(model)
