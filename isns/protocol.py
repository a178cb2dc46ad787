"""iSNSP numbers (RFC 4171): functions (§6.1 table, §5.6.5), status codes
(§6.4), flags (§5.1), attribute tags (§6.1) and the bitmaps some of them
hold, with the value type of every tag this server understands."""

from __future__ import annotations

from enum import Enum, IntEnum, IntFlag

VERSION = 1  # iSNSP version (§5.1)
DEFAULT_PORT = 3205
HEADER_SIZE = 12
MAX_PDU_PAYLOAD = 65535 - HEADER_SIZE  # the PDU length field is 16 bits (§5.1)
RESPONSE = 0x8000  # a response's function ID is the request's with this bit (§6.1)


class Function(IntEnum):
    """Request function IDs (§6.1); responses add RESPONSE."""

    DEV_ATTR_REG = 0x0001
    DEV_ATTR_QRY = 0x0002
    DEV_GET_NEXT = 0x0003
    DEV_DEREG = 0x0004
    SCN_REG = 0x0005
    SCN_DEREG = 0x0006
    SCN_EVENT = 0x0007
    SCN = 0x0008
    DD_REG = 0x0009
    DD_DEREG = 0x000A
    DDS_REG = 0x000B
    DDS_DEREG = 0x000C
    ESI = 0x000D
    HEARTBEAT = 0x000E


def function_name(function: int) -> str:
    """A function ID's name (``DEV_ATTR_REG``), or its number in hex when unknown."""
    return Function(function).name if function in Function._value2member_map_ else f"{function:#x}"


class Status(IntEnum):
    """Response status codes (§6.4)."""

    SUCCESS = 0
    UNKNOWN_ERROR = 1
    MESSAGE_FORMAT_ERROR = 2
    INVALID_REGISTRATION = 3
    INVALID_QUERY = 5
    SOURCE_UNKNOWN = 6
    SOURCE_ABSENT = 7
    SOURCE_UNAUTHORIZED = 8
    NO_SUCH_ENTRY = 9
    VERSION_NOT_SUPPORTED = 10
    INTERNAL_ERROR = 11
    BUSY = 12
    OPTION_NOT_UNDERSTOOD = 13
    INVALID_UPDATE = 14
    MESSAGE_NOT_SUPPORTED = 15
    SCN_EVENT_REJECTED = 16
    SCN_REGISTRATION_REJECTED = 17
    ATTRIBUTE_NOT_IMPLEMENTED = 18
    ESI_NOT_AVAILABLE = 21
    INVALID_DEREGISTRATION = 22
    REGISTRATION_FEATURE_NOT_SUPPORTED = 23


class Flags(IntFlag):
    """PDU header flags (§5.1.4)."""

    CLIENT = 0x8000
    SERVER = 0x4000
    AUTH = 0x2000
    REPLACE = 0x1000
    LAST_PDU = 0x0800
    FIRST_PDU = 0x0400


class Tag(IntEnum):
    """Attribute tags (§6.1) of the iSCSI objects, portal groups, DDs and DD sets."""

    DELIMITER = 0
    ENTITY_IDENTIFIER = 1
    ENTITY_PROTOCOL = 2
    MGMT_IP_ADDRESS = 3
    TIMESTAMP = 4
    PROTOCOL_VERSION_RANGE = 5
    REGISTRATION_PERIOD = 6
    ENTITY_INDEX = 7
    ENTITY_NEXT_INDEX = 8
    ENTITY_ISAKMP_PHASE_1 = 11
    ENTITY_CERTIFICATE = 12
    PORTAL_IP_ADDRESS = 16
    PORTAL_PORT = 17
    PORTAL_SYMBOLIC_NAME = 18
    ESI_INTERVAL = 19
    ESI_PORT = 20
    PORTAL_INDEX = 22
    SCN_PORT = 23
    PORTAL_NEXT_INDEX = 24
    PORTAL_SECURITY_BITMAP = 27
    PORTAL_ISAKMP_PHASE_1 = 28
    PORTAL_ISAKMP_PHASE_2 = 29
    PORTAL_CERTIFICATE = 31
    ISCSI_NAME = 32
    ISCSI_NODE_TYPE = 33
    ISCSI_ALIAS = 34
    ISCSI_SCN_BITMAP = 35
    ISCSI_NODE_INDEX = 36
    WWNN_TOKEN = 37
    ISCSI_NODE_NEXT_INDEX = 38
    ISCSI_AUTH_METHOD = 42
    PG_ISCSI_NAME = 48
    PG_PORTAL_IP_ADDR = 49
    PG_PORTAL_PORT = 50
    PG_TAG = 51
    PG_INDEX = 52
    PG_NEXT_INDEX = 53
    DDS_ID = 2049
    DDS_SYMBOLIC_NAME = 2050
    DDS_STATUS = 2051
    DDS_NEXT_ID = 2052
    DD_ID = 2065
    DD_SYMBOLIC_NAME = 2066
    DD_MEMBER_ISCSI_INDEX = 2067
    DD_MEMBER_ISCSI_NAME = 2068
    DD_MEMBER_FC_PORT_NAME = 2069
    DD_MEMBER_PORTAL_INDEX = 2070
    DD_MEMBER_PORTAL_IP_ADDR = 2071
    DD_MEMBER_PORTAL_PORT = 2072
    DD_FEATURES = 2078
    DD_NEXT_ID = 2079


class Kind(Enum):
    """How an attribute's value is written (§5.5, §6)."""

    STRING = "string"  # UTF-8, NUL-terminated, padded to 4 bytes
    UINT32 = "uint32"
    UINT64 = "uint64"
    ADDRESS = "address"  # 16 bytes: IPv6, or IPv4-mapped ::ffff:a.b.c.d
    PORT = "port"  # 32 bits: bit 16 set for UDP, low 16 bits the port (§6.3.2)
    OPAQUE = "opaque"


KINDS: dict[int, Kind] = {
    Tag.ENTITY_IDENTIFIER: Kind.STRING,
    Tag.ENTITY_PROTOCOL: Kind.UINT32,
    Tag.MGMT_IP_ADDRESS: Kind.ADDRESS,
    Tag.TIMESTAMP: Kind.UINT64,
    Tag.PROTOCOL_VERSION_RANGE: Kind.UINT32,
    Tag.REGISTRATION_PERIOD: Kind.UINT32,
    Tag.ENTITY_INDEX: Kind.UINT32,
    Tag.ENTITY_NEXT_INDEX: Kind.UINT32,
    Tag.PORTAL_IP_ADDRESS: Kind.ADDRESS,
    Tag.PORTAL_PORT: Kind.PORT,
    Tag.PORTAL_SYMBOLIC_NAME: Kind.STRING,
    Tag.ESI_INTERVAL: Kind.UINT32,
    Tag.ESI_PORT: Kind.PORT,
    Tag.PORTAL_INDEX: Kind.UINT32,
    Tag.SCN_PORT: Kind.PORT,
    Tag.PORTAL_NEXT_INDEX: Kind.UINT32,
    Tag.PORTAL_SECURITY_BITMAP: Kind.UINT32,
    Tag.ISCSI_NAME: Kind.STRING,
    Tag.ISCSI_NODE_TYPE: Kind.UINT32,
    Tag.ISCSI_ALIAS: Kind.STRING,
    Tag.ISCSI_SCN_BITMAP: Kind.UINT32,
    Tag.ISCSI_NODE_INDEX: Kind.UINT32,
    Tag.WWNN_TOKEN: Kind.UINT64,
    Tag.ISCSI_NODE_NEXT_INDEX: Kind.UINT32,
    Tag.ISCSI_AUTH_METHOD: Kind.STRING,
    Tag.PG_ISCSI_NAME: Kind.STRING,
    Tag.PG_PORTAL_IP_ADDR: Kind.ADDRESS,
    Tag.PG_PORTAL_PORT: Kind.PORT,
    Tag.PG_TAG: Kind.UINT32,
    Tag.PG_INDEX: Kind.UINT32,
    Tag.PG_NEXT_INDEX: Kind.UINT32,
    Tag.DDS_ID: Kind.UINT32,
    Tag.DDS_SYMBOLIC_NAME: Kind.STRING,
    Tag.DDS_STATUS: Kind.UINT32,
    Tag.DDS_NEXT_ID: Kind.UINT32,
    Tag.DD_ID: Kind.UINT32,
    Tag.DD_SYMBOLIC_NAME: Kind.STRING,
    Tag.DD_MEMBER_ISCSI_INDEX: Kind.UINT32,
    Tag.DD_MEMBER_ISCSI_NAME: Kind.STRING,
    Tag.DD_MEMBER_PORTAL_INDEX: Kind.UINT32,
    Tag.DD_MEMBER_PORTAL_IP_ADDR: Kind.ADDRESS,
    Tag.DD_MEMBER_PORTAL_PORT: Kind.PORT,
    Tag.DD_FEATURES: Kind.UINT32,
    Tag.DD_NEXT_ID: Kind.UINT32,
}


class NodeType(IntFlag):
    """iSCSI Node Type bitmap (§6.4.2)."""

    TARGET = 1
    INITIATOR = 2
    CONTROL = 4


class EntityProtocol(IntEnum):
    """Entity Protocol (§6.2.2)."""

    NONE = 1
    ISCSI = 2
    IFCP = 3


class ScnBits(IntFlag):
    """iSCSI SCN Bitmap (§6.4.4)."""

    DD_MEMBER_ADDED = 1
    DD_MEMBER_REMOVED = 2
    OBJECT_UPDATED = 4
    OBJECT_ADDED = 8
    OBJECT_REMOVED = 16
    MANAGEMENT_REGISTRATION = 32
    TARGET_AND_SELF_ONLY = 64
    INITIATOR_AND_SELF_ONLY = 128


UDP_PORT_FLAG = 1 << 16  # in a port attribute: the port is UDP (§6.3.2)
DDS_ENABLED = 1  # DD Set Status bit (§6.11.1.3)
