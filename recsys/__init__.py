"""recsys: a nightly batch recommender for online shops."""

__version__ = "0.1.0"

# What importing recsys does: choose numpy's BLAS kernels before numpy loads, and TensorFlow's
# CPU allocator before TensorFlow loads (it loads neither itself; see recsys.blas and
# recsys.tensorflow_env).
from recsys.blas import prefer_avx512_kernels as _prefer_avx512_kernels  # noqa: E402
from recsys.tensorflow_env import prefer_returning_allocator as _prefer_returning_allocator  # noqa: E402

_prefer_avx512_kernels()
_prefer_returning_allocator()
