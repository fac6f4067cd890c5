"""concrete-python itself: importing it, keeping the exit status, owning its folders, forking configurations."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..errors import CmlError


def load_concrete() -> Any:
    """concrete-python's ``fhe`` module, with its exit handler removed (see ``keep_exit_status``).

    Raises:
        CmlError: concrete-python is not installed; the message gives the pip line.
    """
    try:
        from concrete import fhe
    except ImportError as exc:  # the optional FHE backend is missing
        raise CmlError(
            "FHE needs concrete-python: pip install 'cml-core[fhe]' (install torch==2.13.0 first on "
            "CPU-only machines)"
        ) from exc
    keep_exit_status()
    return fhe


def keep_exit_status() -> None:
    """Stop concrete-python from overwriting the process's exit status.

    concrete-python registers an ``atexit`` handler that shuts its dataflow runtime down by calling
    C ``exit(0)``: once a circuit has been simulated or run, every process would end with status 0,
    whatever ``sys.exit`` asked for (a failing test run would read as green). The handler only
    stops runtime threads that the process's exit ends anyway, so it is removed. Safe to call
    any number of times, and a no-op when concrete-python was never imported.
    """
    compiler = sys.modules.get("concrete.compiler")
    terminate = getattr(compiler, "_terminate_df_parallelization", None)
    if terminate is not None:
        atexit.unregister(terminate)


# -- where concrete-python writes its compiled libraries ----------------------------------------
#
# Each concrete-python server (one for execution, one for simulation) compiles its shared library
# into a fresh ``tempfile.mkdtemp()`` folder and never removes it (its ``cleanup`` is a no-op), not
# even when building fails: left alone, a test run leaves dozens of folders behind. While cml
# builds a server, that call is routed into a folder cml made, and the folder is removed when the
# server is garbage-collected (or at exit), or at once when building fails.

_T = TypeVar("_T")
_library_root = threading.local()


class _RoutedTempfile:
    """Stands in for ``tempfile`` inside concrete-python's server module: ``mkdtemp`` goes into
    the folder cml owns while this thread builds a server, and everything else is ``tempfile``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)

    def mkdtemp(self, suffix: str | None = None, prefix: str | None = None, dir: str | None = None) -> str:  # noqa: A002
        root = getattr(_library_root, "path", None)
        return tempfile.mkdtemp(suffix, prefix, dir if dir is not None or root is None else root)


def _route_library_folders() -> bool:
    server = sys.modules.get("concrete.fhe.compilation.server")
    if server is None or not hasattr(server, "tempfile"):  # another concrete-python layout: leave it be
        return False
    if not isinstance(server.tempfile, _RoutedTempfile):
        setattr(server, "tempfile", _RoutedTempfile())  # noqa: B010  (the module's global, seen by its functions)
    return True


def in_owned_folder(build: Callable[[], _T]) -> tuple[_T, str | None]:
    """Run ``build`` with concrete-python's library folders routed into a new folder; returns
    the result and that folder (``None`` when routing is unavailable). Removes it if ``build`` fails."""
    if not _route_library_folders():
        return build(), None
    root = tempfile.mkdtemp(prefix="cml-fhe-")
    previous = getattr(_library_root, "path", None)
    _library_root.path = root
    try:
        result = build()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        _library_root.path = previous
    return result, root


def enable_runtime(circuit: Any, mode: str) -> None:
    """Build ``circuit``'s simulation (``mode="simulate"``) or execution server if not built yet,
    its library in a folder removed with the circuit (at once when nothing was built)."""
    enable = circuit.enable_fhe_simulation if mode == "simulate" else circuit.enable_fhe_execution
    _, root = in_owned_folder(enable)
    if root is None:
        return
    if os.listdir(root):
        weakref.finalize(circuit, shutil.rmtree, root, ignore_errors=True)
    else:  # the server existed already
        shutil.rmtree(root, ignore_errors=True)


#: concrete-python's search, while tracing, for a single common ancestor of a multi-input lookup's operands
_SINGLE_ANCESTOR_SEARCH = ("concrete.fhe.compilation.utils",
                           "find_tlu_subgraph_with_multiple_variable_inputs_that_has_a_single_common_ancestor")


_kept_lock = threading.Lock()
_kept_depth = 0
_kept_original: Any = None


@contextlib.contextmanager
def multi_input_lookups_kept() -> Iterator[None]:
    """While tracing within this block, concrete-python leaves each multi-input lookup as it is.

    Before lowering, concrete-python looks for a node that is a common ancestor of all of a multi-input
    lookup's operands and from which every path to them stays in one subgraph, to fuse that subgraph
    into a single-input lookup. It tests the candidates by enumerating every simple path from each to the
    operands, which grows exponentially with the diamonds between them: a transformer's residual
    streams, attention products and normalizations. A two-layer BERT whose second layer adds the
    encrypted attention mask (read by the first layer too) to its scores did not get past that search in
    25 minutes. cml never gives it anything to fuse: operands that are functions of the same integers
    are composed into one lookup before tracing (``ElementwiseOp``), and the others (a sum over a row,
    a product, a residual) are no element-wise function of one tensor.
    """
    module = importlib.import_module(_SINGLE_ANCESTOR_SEARCH[0])
    global _kept_depth, _kept_original
    with _kept_lock:  # compiles in several threads: the first in sets it aside, the last out puts it back
        if _kept_depth == 0:
            _kept_original = getattr(module, _SINGLE_ANCESTOR_SEARCH[1], None)
            if _kept_original is not None:  # (another concrete-python without it: its own search)
                setattr(module, _SINGLE_ANCESTOR_SEARCH[1], lambda graph, processed_terminal_nodes: None)
        _kept_depth += 1
    try:
        yield
    finally:
        with _kept_lock:
            _kept_depth -= 1
            if _kept_depth == 0 and _kept_original is not None:
                setattr(module, _SINGLE_ANCESTOR_SEARCH[1], _kept_original)
                _kept_original = None


def forked_configuration(fhe: Any, configuration: Any, p_error: float | None, global_p_error: float | None,
                   verbose: bool) -> tuple[Any, bool, bool]:
    """The user's configuration forked (theirs is left as it is): no debug dumps into the current
    directory on failure, and no server built inside ``compile`` (cml builds them, see above).
    Returns it with whether the user wants the execution and the simulation servers built at once."""
    base = configuration if configuration is not None else fhe.Configuration()
    options: dict[str, Any] = {"dump_artifacts_on_unexpected_failures": False, "fhe_execution": False,
                               "fhe_simulation": False, "show_progress": verbose}
    if configuration is None:  # what a deployed model sends over the network: seeded, compressed forms
        options.update(compress_evaluation_keys=True, compress_input_ciphertexts=True)
    if p_error is not None:
        options["p_error"] = p_error
    if global_p_error is not None:
        options["global_p_error"] = global_p_error
    return base.fork(**options), bool(base.fhe_execution), bool(base.fhe_simulation)
