"""mtkd_jax: multi-task learning and knowledge distillation for recommendation."""
import setuptools

setuptools.setup(
    name="mtkd_jax",
    version="0.1.0",
    description=("Multi-task learning and knowledge distillation for "
                 "recommender systems in JAX/Flax."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["mtkd_jax", "mtkd_jax.*",
                                               "experiments", "configs"]),
    # The native kernels' source, compiled on first use (mtkd_jax.accel.native).
    package_data={"mtkd_jax.accel.native": ["*.cc", "*.h"]},
    install_requires=[
        "jax[cpu]>=0.10.2,<0.11",
        "flax==0.12.8",
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
        "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4",
                 "scikit-learn>=1.4,<2"],
    },
)
