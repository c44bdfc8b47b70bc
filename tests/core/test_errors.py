from __future__ import annotations

import pickle

import pytest

from cxrlab.core import CxrlabError, InvalidImageError, LeakageError, UnknownLabelError
from cxrlab.core.io import atomic_write_text, relative_to_or_absolute


@pytest.mark.parametrize("cls, builtin", [(InvalidImageError, ValueError), (UnknownLabelError, ValueError)])
def test_file_errors_name_the_file_and_pickle(cls, builtin):
    err = cls("a/b.png", "empty file (0 bytes)")
    assert isinstance(err, CxrlabError) and isinstance(err, builtin)
    assert str(err) == "a/b.png: empty file (0 bytes)"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))


def test_error_hierarchy():
    assert issubclass(LeakageError, ValueError)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_relative_paths(tmp_path):
    (tmp_path / "a").mkdir()
    assert relative_to_or_absolute(tmp_path / "img" / "x.png", tmp_path / "a") == "../img/x.png"
