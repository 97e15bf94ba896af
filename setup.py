"""mtkd_jax: multi-task learning and knowledge distillation for recommendation.

Only the library `mtkd_jax` is installed. `configs/`, `experiments/` and
`benchmarks/` are top-level folders of the repository, run from its root
(`python -m experiments.run --config configs/<exp>.py`), so no generic
top-level name such as `configs` lands in site-packages.

JAX comes as a range; the accelerator build is an extra:
`pip install ".[cuda]"` (jax[cuda12]) or `".[tpu]"` (jax[tpu]); plain
`pip install .` gets the CPU build that `jax` depends on (`".[cpu]"` says so
explicitly).
"""
import setuptools

# The one JAX range; the extras below add the platform's plugins to it.
JAX = "jax>=0.10.2,<0.13"

setuptools.setup(
    name="mtkd_jax",
    version="0.1.0",
    description=("Multi-task learning and knowledge distillation for "
                 "recommender systems in JAX/Flax."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["mtkd_jax", "mtkd_jax.*"]),
    # The native kernels' source, compiled on first use (mtkd_jax.accel.native).
    package_data={"mtkd_jax.accel.native": ["*.cc", "*.h"]},
    install_requires=[
        JAX,
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "tensorflow-datasets>=4.9.10,<4.10",
        "array_record>=0.8,<0.9",
        "importlib_resources>=6",
        "absl-py>=2.1,<3",
        "ml_collections>=1.1,<1.2",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
        "psutil>=5.9",
        "matplotlib>=3.8,<4",  # the ablation report's plots
        "flatbuffers>=24",  # jax.export serialisation (experiments.export)
    ],
    extras_require={
        "cpu": [JAX.replace("jax", "jax[cpu]", 1)],
        "cuda": [JAX.replace("jax", "jax[cuda12]", 1)],
        "tpu": [JAX.replace("jax", "jax[tpu]", 1)],
        # setuptools: tests/test_packaging.py reads setup.py's arguments
        # (venvs of Python >= 3.12 come without it); fsspec: the fake gs://
        # filesystem of tests/test_paths.py.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4",
                 "scikit-learn>=1.4,<2", "setuptools>=68", "fsspec>=2023.1"],
    },
)
