"""What one request may cost, a module a job.

``body``: the bytes of a body and the time they take to arrive; ``admission``: how many
computations run and wait at once; ``work``: the memory and arithmetic of one computation.
"""

from .admission import Gate
from .body import BodyLimit
from .work import WorkLimits, check_cost

__all__ = ["BodyLimit", "Gate", "WorkLimits", "check_cost"]
