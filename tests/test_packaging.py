"""setup.py: what a wheel installs, and the dependency ranges.

The arguments setup.py passes to `setuptools.setup` are read without
building anything (seconds), so the test checks the same package list and
requirements that `pip install .` uses.
"""
import pathlib
import re
import runpy

import pytest
import setuptools

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_kwargs(monkeypatch_module):
  captured = {}
  monkeypatch_module.setattr(setuptools, "setup",
                             lambda **kwargs: captured.update(kwargs))
  monkeypatch_module.chdir(REPO)
  runpy.run_path(str(REPO / "setup.py"))
  return captured


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


def _library_packages():
  """Every folder of mtkd_jax/ that is a package, as dotted names."""
  return sorted(".".join(p.parent.relative_to(REPO).parts)
                for p in (REPO / "mtkd_jax").rglob("__init__.py")
                if "__pycache__" not in p.parts)


def test_only_the_library_is_installed(setup_kwargs):
  packages = sorted(setup_kwargs["packages"])
  assert packages == _library_packages()
  top_level = {p.split(".")[0] for p in packages}
  # configs/, experiments/, benchmarks/ and tests/ run from the clone; as
  # top-level names in site-packages they would clash with other projects.
  assert top_level == {"mtkd_jax"}


def test_native_kernel_sources_are_shipped(setup_kwargs):
  data = setup_kwargs["package_data"]["mtkd_jax.accel.native"]
  sources = [p.name for p in (REPO / "mtkd_jax" / "accel" / "native").iterdir()
             if p.suffix in (".cc", ".h")]
  assert sources
  assert all(any(pathlib.PurePath(s).match(g) for g in data) for s in sources)


def test_python_and_dependency_ranges(setup_kwargs):
  assert setup_kwargs["python_requires"] == ">=3.11"
  requirements = setup_kwargs["install_requires"]
  for extra in setup_kwargs["extras_require"].values():
    requirements = requirements + extra
  exact = [r for r in requirements if "==" in r]
  assert not exact, f"exact pins: {exact}"
  # The base install names plain jax (its CPU jaxlib comes with it); the
  # accelerator builds are extras over the same version range.
  jax = [r for r in setup_kwargs["install_requires"]
         if re.match(r"jax\b", r)]
  assert len(jax) == 1 and jax[0].startswith("jax>=")
  version_range = jax[0][len("jax"):]
  extras = setup_kwargs["extras_require"]
  assert extras["cpu"] == ["jax[cpu]" + version_range]
  assert extras["cuda"] == ["jax[cuda12]" + version_range]
  assert extras["tpu"] == ["jax[tpu]" + version_range]
