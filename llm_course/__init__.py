"""llm_course: the reference implementations behind the llm-course book.

Each module builds one idea of a large language model (a tokenizer, attention, a
transformer block, a training loop, ...). The book shows and runs them, the graded
notebooks compare students' work with them, and the tests compare them with
independent implementations (PyTorch, tiktoken, Hugging Face).

The library never picks a device: tensors it creates follow their inputs. Scripts,
the book and the command line call :func:`get_device` once.
"""

from llm_course.utils import get_device, set_seed

__all__ = ["get_device", "set_seed"]
__version__ = "0.1.0"
