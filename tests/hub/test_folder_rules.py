"""What a push stores from a folder: links, hidden files, FIFOs and devices (hub/folders.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from hub import Registry
from hub.inspect import inspect_adapter
from schemas.errors import InvalidAdapter


@pytest.fixture
def folder(adapters, tmp_path):
    out = tmp_path / "adapter"
    shutil.copytree(adapters("lora"), out)
    return out


def _push_cli(home, folder, timeout=120):
    """`hub push` in its own process: a hang is a failure here, not a stuck test run."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "push", str(folder), "--name", "team/x"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HUB_HOME": str(home)},
    )


def test_links_inside_the_folder_are_stored_as_their_targets(registry, folder, tmp_path):
    notes = folder / "notes"
    notes.mkdir()
    (notes / "eval.txt").write_text("exact_match 0.71\n")
    (folder / "eval-link.txt").symlink_to("notes/eval.txt")
    (folder / "more").symlink_to("notes", target_is_directory=True)
    card = registry.push(folder, name="team/x").card
    assert sorted(f.path for f in card.files) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "eval-link.txt",
        "more/eval.txt",
        "notes/eval.txt",
    ]
    out = registry.pull("team/x", tmp_path / "pulled")
    for rel in ("eval-link.txt", "more/eval.txt"):
        assert not (out / rel).is_symlink() and (out / rel).read_text() == "exact_match 0.71\n"
    for entry in card.files:  # byte-identical to what the folder reads as
        assert (out / entry.path).read_bytes() == (folder / entry.path).read_bytes()


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda f: (f / "hostname").symlink_to("/etc/hostname"),
            "{f}/hostname is a link to /etc/hostname, outside the adapter folder: hub stores only"
            " what is inside it (copy the file in instead)",
        ),
        (
            lambda f: (f / "README.md").unlink() or (f / "README.md").symlink_to("/dev/zero"),
            "{f}/README.md is a link to /dev/zero, outside the adapter folder: hub stores only"
            " what is inside it (copy the file in instead)",
        ),
        (
            lambda f: (f / "gone").symlink_to(f / "nothing-here"),
            "{f}/gone is a broken link (to {f}/nothing-here); remove it or fix it",
        ),
        (
            lambda f: (f / "sub").mkdir() or (f / "sub" / "up").symlink_to(".."),
            "{f}/sub/up is a link loop (it points at a folder that contains it)",
        ),
        (
            lambda f: (f / "README.md").unlink() or os.mkfifo(f / "README.md"),
            "{f}/README.md is not a regular file (a FIFO); hub stores only regular files:"
            " remove it",
        ),
    ],
    ids=["link-out", "dev-zero", "broken", "loop", "fifo"],
)
def test_what_cannot_be_stored_faithfully_is_refused_at_once(hub_home, folder, make, message):
    make(folder)
    result = _push_cli(hub_home, folder)  # a FIFO README used to hang here forever
    assert (result.returncode, result.stderr) == (1, f"Error: {message.format(f=folder)}\n")
    assert not (hub_home / "store" / "blobs").exists()


def test_inspection_never_blocks_on_a_fifo_readme(folder):
    (folder / "README.md").unlink()
    os.mkfifo(folder / "README.md")
    probe = "import sys; from hub.inspect import inspect_adapter;"
    probe += " print(inspect_adapter(sys.argv[1]).description)"
    result = subprocess.run(
        [sys.executable, "-c", probe, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "None\n"), result.stderr


def test_a_huge_readme_is_read_only_as_far_as_needed(folder):
    with open(folder / "README.md", "wb") as fh:
        fh.write(b"A description line.\n\n")
        fh.truncate(3 << 30)  # 3 GiB, sparse: reading it whole would take seconds and memory
    assert inspect_adapter(folder).description == "A description line."


def test_hidden_files_and_pycache_are_skipped_locally(registry, folder):
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]\n")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0")
    card = registry.push(folder, name="team/x").card
    assert [f.path for f in card.files] == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_a_link_into_the_store_is_only_trusted_for_the_registry_itself(hub_home, folder, tmp_path):
    with Registry(hub_home) as reg:
        first = reg.push(folder, name="team/x").card
        blob = reg.blob_path(first, "README.md")
    other = tmp_path / "other-home"
    staged = tmp_path / "staged"
    shutil.copytree(folder, staged)
    (staged / "README.md").unlink()
    (staged / "README.md").symlink_to(blob)
    with Registry(hub_home) as reg:  # the server stages pushes as links to its own blobs
        assert reg.push(staged, name="team/y").card.files == first.files
    with Registry(other) as reg, pytest.raises(InvalidAdapter) as error:
        reg.push(staged, name="team/y")
    assert str(error.value).startswith(f"{staged}/README.md is a link to {blob}, outside")
