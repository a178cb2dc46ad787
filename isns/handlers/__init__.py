"""What each iSNS request does to the registry (RFC 4171 §5.6.5): one
function per request type, taking the registry's parts (isns/context.py),
the request, its source's iSCSI name and the time, and returning the
response or raising :class:`~isns.errors.IsnsError`."""

from __future__ import annotations

from collections.abc import Callable

from ..codec import Message
from ..context import Context
from ..protocol import Function
from .domains import dd_dereg, dd_reg, dds_dereg, dds_reg
from .query import dev_attr_qry, dev_get_next
from .registration import dev_attr_reg, dev_dereg
from .subscriptions import scn_dereg, scn_event, scn_reg

Handler = Callable[[Context, Message, str, float], Message]

HANDLERS: dict[Function, Handler] = {
    Function.DEV_ATTR_REG: dev_attr_reg,
    Function.DEV_ATTR_QRY: dev_attr_qry,
    Function.DEV_GET_NEXT: dev_get_next,
    Function.DEV_DEREG: dev_dereg,
    Function.DD_REG: dd_reg,
    Function.DD_DEREG: dd_dereg,
    Function.DDS_REG: dds_reg,
    Function.DDS_DEREG: dds_dereg,
    Function.SCN_REG: scn_reg,
    Function.SCN_DEREG: scn_dereg,
    Function.SCN_EVENT: scn_event,
}

__all__ = ["HANDLERS", "Handler"]
