"""A file's identity is its content: rewritten files are found out, as the
reference promises, and the testing helpers run a recipe through a plugin."""

from __future__ import annotations

import os
import shutil

from pydantic import BaseModel

from sdflow import hookimpl
from sdflow.identity import file_sha256
from sdflow.testing import registry_with, run_recipe


def test_a_file_rewritten_with_its_size_and_mtime_kept_is_hashed_again(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"A" * 1000)
    first = file_sha256(path)
    stat = path.stat()
    path.write_bytes(b"B" * 1000)  # what cp -p does: same size, mtime put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_sha256(path) != first


def test_a_file_replaced_by_another_of_the_same_size_and_mtime_is_hashed_again(tmp_path):
    path, other = tmp_path / "model.safetensors", tmp_path / "new.safetensors"
    path.write_bytes(b"A" * 1000)
    first = file_sha256(path)
    other.write_bytes(b"B" * 1000)
    shutil.copystat(path, other)  # what rsync -t does: a new file, renamed over the old
    os.replace(other, path)
    assert file_sha256(path) != first


def test_a_file_rewritten_inside_a_folder_changes_the_folders_identity(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    weights = folder / "unet" / "weights.safetensors"
    weights.write_bytes(b"A" * 100)
    first = file_sha256(folder)
    folder_mtime = folder.stat().st_mtime_ns
    weights.write_bytes(b"B" * 100)
    assert folder.stat().st_mtime_ns == folder_mtime  # the folder itself did not change
    assert file_sha256(folder) != first
    assert file_sha256(folder) == file_sha256(folder, verify=True)


class Text(BaseModel):
    text: str


class Nothing(BaseModel):
    pass


def shout(ctx, params):
    return {"out": params.text.upper()}


def save(ctx, params, text):
    path = ctx.output_dir / "said.txt"
    path.write_text(text)
    ctx.file_written(path)


class Shouting:
    @hookimpl
    def sdflow_port_types(self, registry):
        registry.add_port_type("WORDS")

    @hookimpl
    def sdflow_stage_types(self, registry):
        registry.add_stage("shout", params=Text, outputs={"out": "WORDS"}, run=shout)
        registry.add_stage("say", params=BaseModel, inputs={"text": "WORDS"}, output=True, run=save)
        registry.add_stage("say_it", params=Nothing, inputs={"text": "WORDS"}, output=True, run=save)


def test_a_plugin_registered_for_one_test_runs_a_recipe(tmp_path):
    recipe = 'sdflow 1\nloud = shout(text="hello")\nsay_it(text=loud)\n'
    with registry_with(("shouting", Shouting()), installed=False) as registry:
        assert [str(p) for p in registry.problems] == [
            "plugin 'shouting': stage type 'say': params must be a pydantic BaseModel class"]
        result = run_recipe(recipe, registry, tmp_path)
    assert (tmp_path / "said.txt").read_text() == "HELLO"
    assert result.ran == ["loud", "say_it#1"]


def test_the_pytest_fixture_registers_a_plugin_for_one_test(sdflow_plugins, tmp_path):
    registry = sdflow_plugins(("shouting", Shouting()), installed=False)
    result = run_recipe('sdflow 1\nloud = shout(text="hey")\nsay_it(text=loud)\n', registry, tmp_path)
    assert (tmp_path / "said.txt").read_text() == "HEY" and result.ran == ["loud", "say_it#1"]


HASH_OF = """
import sys
from sdflow.identity import file_sha256
print(file_sha256(sys.argv[1], verify=sys.argv[2] == "verify"))
"""


def hash_in_a_new_process(path, cache, verify=False, **env):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", HASH_OF, str(path), "verify" if verify else "cached"],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "SDFLOW_CACHE_DIR": str(cache), **env})
    return result.stdout.strip()


def test_a_large_files_hash_is_kept_for_the_next_process_under_its_stat_signature(tmp_path):
    import hashlib

    big = tmp_path / "model.safetensors"
    big.write_bytes(os.urandom(2 << 20))
    true = hashlib.sha256(big.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    assert hash_in_a_new_process(big, cache) == true
    (entry,) = (cache / "sha256").iterdir()
    assert entry.read_text() == true + "\n" and entry.stat().st_mode & 0o777 != 0
    # The next process reads the entry instead of the file: shown by an entry made to lie.
    entry.write_text("0" * 64 + "\n")
    assert hash_in_a_new_process(big, cache) == "0" * 64
    assert hash_in_a_new_process(big, cache, verify=True) == true  # what a lock or replay may ask for
    # A change to the file (its ctime at least) is a new signature: hashed again, and kept.
    os.utime(big)
    assert hash_in_a_new_process(big, cache) == true
    assert len(list((cache / "sha256").iterdir())) == 2


def test_the_disk_cache_is_skipped_when_off_unwritable_or_unreadable(tmp_path):
    import hashlib

    big = tmp_path / "model.safetensors"
    big.write_bytes(os.urandom(1 << 20))
    true = hashlib.sha256(big.read_bytes()).hexdigest()
    assert hash_in_a_new_process(big, tmp_path / "off", SDFLOW_HASH_CACHE="0") == true
    assert not (tmp_path / "off").exists()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    assert hash_in_a_new_process(big, blocked) == true
    cache = tmp_path / "cache"
    assert hash_in_a_new_process(big, cache) == true
    (entry,) = (cache / "sha256").iterdir()
    entry.write_text("not a hash")
    assert hash_in_a_new_process(big, cache) == true
    small = tmp_path / "small.txt"
    small.write_text("small")
    hash_in_a_new_process(small, tmp_path / "small-cache")
    assert not (tmp_path / "small-cache").exists()  # under 1 MiB: hashed, not kept
