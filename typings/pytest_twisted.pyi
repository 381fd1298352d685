# Type stubs for the parts of pytest-twisted the tests use (the package ships none).
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

_F = TypeVar("_F", bound=Callable[..., Any])

def ensureDeferred(f: _F) -> _F: ...
def inlineCallbacks(f: _F) -> _F: ...
def blockon(d: Deferred[Any]) -> Any: ...
