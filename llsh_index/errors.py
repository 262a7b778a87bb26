"""Typed errors.  Each one also derives from the built-in exception a caller would expect."""

# What np.load and the zip reader raise on a damaged, truncated or foreign .npz file has no closed
# list: BadZipFile, EOFError, OSError, ValueError (pickled data refused), NotImplementedError (a
# compression method), RuntimeError (a flipped flag bit: "encrypted"), zlib.error, SyntaxError or
# tokenize's TokenError (a .npy header that no longer parses), MemoryError (a flipped shape)...  The
# readers catch these, after letting FileNotFoundError and the package's own errors through.
NPZ_READ_ERRORS = (Exception,)


class LLSHError(Exception):
    """Base class of every error raised by llsh_index."""


class InvalidInputError(LLSHError, ValueError):
    """An array has the wrong shape, dimension or size, contains NaN/Inf, or is empty."""


class InvalidDTypeError(LLSHError, TypeError):
    """An array has a dtype the index cannot use (integer, bool, complex, object...)."""


class DeviceMismatchError(LLSHError, ValueError):
    """An input lives on another device than the index."""


class NotFittedError(LLSHError, RuntimeError):
    """The index has no hash layers yet, or nothing has been added to it."""


class ConfigError(LLSHError, ValueError):
    """A constructor or method argument is out of range."""


class IndexFormatError(LLSHError, ValueError):
    """A saved file is damaged, truncated, of a future version, or not an llsh_index file."""


class IndexFileNotFoundError(LLSHError, FileNotFoundError):
    """A file given to LearnableLSHIndex.load() does not exist (the message and ``filename`` name it).
    A FileNotFoundError, so ``except FileNotFoundError`` keeps catching it."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.filename = None if path is None else str(path)

    def __str__(self) -> str:  # FileNotFoundError would otherwise print "None"
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # pickled (a worker's error): rebuilt with its path, not OSError's (errno, strerror)
        return type(self), (str(self), self.filename)


class CudaUnavailableError(LLSHError, RuntimeError):
    """The CUDA backend was asked for but is not built or no device is present."""


class IndexStateError(LLSHError, RuntimeError):
    """The call does not fit the index's state (e.g. fit() on an index that already holds items)."""


class WritePathError(LLSHError, OSError):
    """A file cannot be written where asked: the path is a folder, a device or another non-file,
    a component of its folder is a file, the folder cannot be created or written, or the write
    itself fails (a full disk)."""


class UndertrainedWarning(UserWarning):
    """fit() ran too few SGD steps at a small learning rate to move the hash layers: the index is
    still close to plain LSH (the paper's lr 1e-3 on a few short videos, such as Ped2's 16)."""
