"""compat.errors: the GoTError hierarchy (sheet section 1)."""

from __future__ import annotations

import pickle
from typing import Type

import pytest

import compat
from compat.errors import (
    ConflictError,
    CorruptionError,
    GoTError,
    NotFoundError,
    SyncError,
    TransactionError,
    ValidationError,
)

SUBCLASSES = [TransactionError, ConflictError, CorruptionError, SyncError, NotFoundError, ValidationError]
ALL_CLASSES = [GoTError, *SUBCLASSES]


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_subclass_inherits_and_is_caught_as_goterror(cls: Type[GoTError]) -> None:
    assert issubclass(cls, GoTError)
    assert issubclass(cls, Exception)
    with pytest.raises(GoTError) as caught:
        raise cls("boom")
    assert type(caught.value) is cls


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_str_is_the_message(cls: Type[GoTError]) -> None:
    error = cls("something went wrong", entity_id="T-1")
    assert error.message == "something went wrong"
    assert str(error) == error.message


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_context_holds_keyword_arguments(cls: Type[GoTError]) -> None:
    error = cls("msg", entity_id="T-1", version=3)
    assert error.context == {"entity_id": "T-1", "version": 3}


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_context_is_empty_dict_without_kwargs(cls: Type[GoTError]) -> None:
    error = cls("msg")
    assert error.context == {}
    assert isinstance(error.context, dict)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_to_dict(cls: Type[GoTError]) -> None:
    data = cls("msg", key="value").to_dict()
    assert data == {"error_type": cls.__name__, "message": "msg", "context": {"key": "value"}}
    assert isinstance(data["context"], dict)


def test_subclass_keeps_its_context() -> None:
    error = ConflictError("Version conflict", expected_version=2, actual_version=3)
    assert error.context["expected_version"] == 2
    assert error.context["actual_version"] == 3
    assert error.to_dict()["error_type"] == "ConflictError"


def test_context_survives_pickling() -> None:
    error = CorruptionError("Checksum mismatch", expected="aa", actual="bb")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CorruptionError
    assert copy.message == "Checksum mismatch"
    assert copy.context == {"expected": "aa", "actual": "bb"}


def test_root_exports_all_seven_classes() -> None:
    for cls in ALL_CLASSES:
        assert getattr(compat, cls.__name__) is cls
        assert cls.__name__ in compat.__all__
