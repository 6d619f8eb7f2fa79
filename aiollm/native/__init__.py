"""The native request table (a cffi extension); see request_table.py."""

from aiollm.native.request_table import FinishReason, RequestTable, ReqState, TableError

__all__ = ["FinishReason", "RequestTable", "ReqState", "TableError"]
