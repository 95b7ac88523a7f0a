"""Word-vector files cannot run code: a pickle is refused before anything unpickles it."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from recsys.cli import cli
from recsys.errors import InputError
from recsys.features import vectors as wv


class _Evil:
    """Unpickling this creates the marker file (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=4))
    return path


def _keyed(words: dict[str, list[float]]):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=len(next(iter(words.values()))))
    kv.add_vectors(list(words), np.asarray(list(words.values()), dtype=np.float32))
    return kv


def test_the_malicious_pickle_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    path = _evil_pickle(tmp_path / "evil.kv", marker)
    pickle.loads(path.read_bytes())  # the probe itself: proves the file is harmful
    assert marker.exists()


@pytest.mark.parametrize("name", ["evil.kv", "evil.bin", "evil.txt", "evil.npy"])
def test_a_pickle_is_refused_whatever_its_name(tmp_path, name):
    marker = tmp_path / "PWNED"
    path = _evil_pickle(tmp_path / name, marker)
    with pytest.raises(InputError) as err:
        wv.load_vectors_file(path)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message
    assert "refusing to load a gensim .kv / pickle file" in message or "not a" in message


@pytest.mark.subprocess
def test_cli_build_with_a_malicious_kv_exits_2_in_one_line_without_running_it(tmp_path, cli_env):
    marker = tmp_path / "PWNED"
    path = _evil_pickle(tmp_path / "evil.kv", marker)
    result = subprocess.run(
        [sys.executable, "-m", "recsys", "features", "build", "--word-vectors", str(path)],
        env={**os.environ, **cli_env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("recsys: error: ") and "--trust-pickle" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_trust_pickle_loads_a_real_kv_and_warns(tmp_path, caplog):
    kv = _keyed({"a": [1, 0], "b": [0, 1]})
    path = tmp_path / "words.kv"
    kv.save(str(path), separately=["vectors"])
    with pytest.raises(InputError, match="refusing"):
        wv.load_vectors_file(path)
    with caplog.at_level(logging.WARNING, logger="recsys.features.vectors"):
        loaded = wv.load_vectors_file(path, trust_pickle=True)
    assert loaded.vocabulary_size == 2 and isinstance(loaded.keyed_vectors.vectors, np.memmap)
    assert any("--trust-pickle" in r.getMessage() for r in caplog.records)
    with wv.trusting_pickle():
        assert wv.load_vectors_file(path).vocabulary_size == 2
    with pytest.raises(InputError, match="refusing"):  # the trust ends with the block
        wv.load_vectors_file(path)


def test_npy_plus_vocab_round_trip_is_memory_mapped(tmp_path):
    kv = _keyed({"red": [1, 0, 0], "blue": [0, 1, 0], "tea": [0, 0, 1]})
    path = tmp_path / "words.npy"
    vocab = wv.save_npy_vectors(kv, path)
    assert vocab == tmp_path / "words.vocab"
    assert vocab.read_text() == "red\nblue\ntea\n"
    loaded = wv.load_vectors_file(path)
    assert isinstance(loaded.keyed_vectors.vectors, np.memmap)
    assert loaded.keyed_vectors.index_to_key == ["red", "blue", "tea"]
    np.testing.assert_array_equal(loaded.keyed_vectors["tea"], [0, 0, 1])
    assert wv.load_vectors_file(path, limit=2).vocabulary_size == 2


def test_npy_refuses_object_arrays_and_a_wrong_vocabulary(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "obj.npy"
    np.save(path, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    path.with_suffix(".vocab").write_text("a\n")
    with pytest.raises(InputError, match="not a readable .npy matrix"):
        wv.load_vectors_file(path)
    assert not marker.exists()
    good = tmp_path / "good.npy"
    np.save(good, np.eye(3, dtype=np.float32))
    with pytest.raises(InputError, match="vocabulary file .* is missing"):
        wv.load_vectors_file(good)
    good.with_suffix(".vocab").write_text("a\nb\n")
    with pytest.raises(InputError, match="2 words for the 3 vectors"):
        wv.load_vectors_file(good)
    good.with_suffix(".vocab").write_text("a\nb\na\n")
    with pytest.raises(InputError, match="more than once"):
        wv.load_vectors_file(good)


def test_convert_vectors_cli_turns_a_trusted_kv_into_npy(tmp_path):
    kv = _keyed({"a": [1, 0], "b": [0, 1]})
    source = tmp_path / "words.kv"
    kv.save(str(source))
    target = tmp_path / "words.npy"
    runner = CliRunner()
    refused = runner.invoke(cli, ["features", "convert-vectors", str(source), str(target)])
    assert isinstance(refused.exception, InputError) and not target.exists()
    result = runner.invoke(
        cli, ["features", "convert-vectors", "--trust-pickle", str(source), str(target)]
    )
    assert result.exit_code == 0, result.output
    loaded = wv.load_vectors_file(target)
    assert loaded.keyed_vectors.index_to_key == ["a", "b"]


def test_recsys_run_refuses_a_pickle_before_any_step(tmp_path, cli_env):
    marker = tmp_path / "PWNED"
    path = _evil_pickle(tmp_path / "evil.bin", marker)
    result = CliRunner().invoke(cli, ["run", "--word-vectors", str(path)], env=cli_env)
    assert isinstance(result.exception, InputError) and "refusing" in str(result.exception)
    assert not marker.exists()
    history = CliRunner().invoke(cli, ["run", "--history"], env=cli_env)
    assert history.exit_code == 0 and history.output.strip() == ""  # no run was started
