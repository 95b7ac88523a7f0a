"""recsys: a nightly batch recommender for online shops."""

__version__ = "0.1.0"

# The one thing importing recsys does: choose numpy's BLAS kernels before numpy loads (it loads
# nothing itself; see recsys.blas).
from recsys.blas import prefer_avx512_kernels as _prefer_avx512_kernels  # noqa: E402

_prefer_avx512_kernels()
