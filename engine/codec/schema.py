"""The JIP-3 event table: discriminator -> (JSON tag, fields in wire order).

Names, nesting and enum strings follow EVENTS-JSON.md section 2; wire types follow JIP-3.md.
This table is the only description of the events: events.py compiles decoders from it and
encodes by walking it.
"""

from __future__ import annotations

from .types import (
    U8,
    U16,
    U32,
    U64,
    Bool,
    CoreBits,
    CoreCounts,
    Enum,
    Hash,
    ImportSpec,
    Option,
    PeerAddress,
    Seq,
    String,
    Struct,
    Tuple,
    Type,
)

Reason = String(128)
Side = Enum(("Local", "Remote"))
Direction = Enum(("Ascending", "Descending"))
# JIP-3 says bool ("is trivial?"); jamtart and hence our JSON render it as this enum.
TrivialKind = Enum(("NonTrivial", "Trivial"))
GuaranteeDiscardReason = Enum(
    ("PackageReportedOnChain", "ReplacedByBetter", "CannotReportOnChain", "TooManyGuarantees", "Other")
)
AnnouncedPreimageForgetReason = Enum(
    ("ProvidedOnChain", "NotRequestedOnChain", "FailedToAcquire", "TooManyAnnounced", "BadLength", "Other")
)
PreimageDiscardReason = Enum(("ProvidedOnChain", "NotRequestedOnChain", "TooManyPreimages", "Other"))

BlockOutline = Struct(
    ("size_bytes", U32),
    ("hash", Hash),
    ("num_tickets", U32),
    ("num_preimages", U32),
    ("total_preimages_size", U32),
    ("num_guarantees", U32),
    ("num_assurances", U32),
    ("num_dispute_verdicts", U32),
)
ExecCost = Struct(("gas_used", U64), ("elapsed_ns", U64))
IsAuthorizedCost = Struct(("total", ExecCost), ("load_ns", U64), ("host_call", ExecCost))
RefineCost = Struct(
    ("total", ExecCost),
    ("load_ns", U64),
    (
        "host_call",
        Struct(("lookup", ExecCost), ("vm", ExecCost), ("mem", ExecCost), ("invoke", ExecCost), ("other", ExecCost)),
    ),
)
AccumulateCost = Struct(
    ("num_calls", U32),
    ("num_transfers", U32),
    ("num_items", U32),
    ("total", ExecCost),
    ("load_ns", U64),
    (
        "host_call",
        Struct(
            ("state", ExecCost),
            ("lookup", ExecCost),
            ("preimage", ExecCost),
            ("service", ExecCost),
            ("transfer", ExecCost),
            ("transfer_dest_gas", U64),
            ("other", ExecCost),
        ),
    ),
)
WorkItemOutline = Struct(
    ("service_id", U32),
    ("payload_size", U32),
    ("refine_gas_limit", U64),
    ("accumulate_gas_limit", U64),
    ("sum_of_extrinsic_lengths", U32),
    ("imports", Seq(ImportSpec)),
    ("num_exported_segments", U16),
)
WorkPackageOutline = Struct(
    ("work_package_size", U32),
    ("work_package_hash", Hash),
    ("anchor", Hash),
    ("lookup_anchor_slot", U32),
    ("prerequisites", Seq(Hash)),
    ("work_items", Seq(WorkItemOutline)),
)
WorkReportOutline = Struct(
    ("work_report_hash", Hash), ("bundle_size", U32), ("erasure_root", Hash), ("segments_root", Hash)
)
GuaranteeOutline = Struct(("work_report_hash", Hash), ("slot", U32), ("guarantors", Seq(U16)))

Fields = list[tuple[str, Type]]

# Shorthands for the many events that are just an id or an id plus a reason.
def _id(key: str) -> Fields:
    return [(key, U64)]


def _failed(key: str) -> Fields:
    return [(key, U64), ("reason", Reason)]


EVENTS: dict[int, tuple[str, Fields]] = {
    0: ("Dropped", [("last_timestamp", U64), ("num", U64)]),
    # Status, best/finalized block, sync
    10: (
        "Status",
        [
            ("num_peers", U32),
            ("num_val_peers", U32),
            ("num_sync_peers", U32),
            ("num_guarantees", CoreCounts()),
            ("num_shards", U32),
            ("shards_size", U64),
            ("num_preimages", U32),
            ("preimages_size", U32),
        ],
    ),
    11: ("BestBlockChanged", [("slot", U32), ("hash", Hash)]),
    12: ("FinalizedBlockChanged", [("slot", U32), ("hash", Hash)]),
    13: ("SyncStatusChanged", [("synced", Bool)]),
    # Networking
    20: ("ConnectionRefused", [("from", PeerAddress)]),
    21: ("ConnectingIn", [("from", PeerAddress)]),
    22: ("ConnectInFailed", _failed("connecting_id")),
    23: ("ConnectedIn", [("connecting_id", U64), ("peer_id", Hash)]),
    24: ("ConnectingOut", [("to", Struct(("peer_id", Hash), ("peer_address", PeerAddress)))]),
    25: ("ConnectOutFailed", _failed("connecting_id")),
    26: ("ConnectedOut", _id("connecting_id")),
    27: ("Disconnected", [("peer", Hash), ("terminator", Option(Side)), ("reason", Reason)]),
    28: ("PeerMisbehaved", [("peer", Hash), ("reason", Reason)]),
    # Block authoring/importing
    40: ("Authoring", [("slot", U32), ("parent", Hash)]),
    41: ("AuthoringFailed", _failed("authoring_id")),
    42: ("Authored", [("authoring_id", U64), ("outline", BlockOutline)]),
    43: ("Importing", [("slot", U32), ("outline", BlockOutline)]),
    44: ("BlockVerificationFailed", _failed("importing_id")),
    45: ("BlockVerified", _id("importing_id")),
    46: ("BlockExecutionFailed", _failed("authoring_or_importing_id")),
    47: (
        "BlockExecuted",
        [("authoring_or_importing_id", U64), ("accumulate_costs", Seq(Tuple(U32, AccumulateCost)))],
    ),
    # Block distribution
    60: ("BlockAnnouncementStreamOpened", [("peer", Hash), ("opener", Side)]),
    61: ("BlockAnnouncementStreamClosed", [("peer", Hash), ("closer", Side), ("reason", Reason)]),
    62: ("BlockAnnounced", [("peer", Hash), ("announcer", Side), ("slot", U32), ("hash", Hash)]),
    63: ("SendingBlockRequest", [("recipient", Hash), ("hash", Hash), ("direction", Direction), ("max_blocks", U32)]),
    64: ("ReceivingBlockRequest", [("sender", Hash)]),
    65: ("BlockRequestFailed", _failed("request_id")),
    66: ("BlockRequestSent", _id("request_id")),
    67: (
        "BlockRequestReceived",
        [("request_id", U64), ("hash", Hash), ("direction", Direction), ("max_blocks", U32)],
    ),
    68: ("BlockTransferred", [("request_id", U64), ("slot", U32), ("outline", BlockOutline), ("last", Bool)]),
    # Safrole tickets
    80: ("GeneratingTickets", [("epoch", U32)]),
    81: ("TicketGenerationFailed", _failed("generating_id")),
    82: ("TicketsGenerated", [("generating_id", U64), ("ids", Seq(Hash))]),
    83: ("TicketTransferFailed", [("peer", Hash), ("sender", Side), ("from_proxy", Bool), ("reason", Reason)]),
    84: (
        "TicketTransferred",
        [("peer", Hash), ("sender", Side), ("from_proxy", Bool), ("epoch", U32), ("attempt", U8), ("id", Hash)],
    ),
    # Guaranteeing
    90: ("WorkPackageSubmission", [("builder", Hash), ("bundle", Bool)]),
    91: ("WorkPackageBeingShared", [("primary", Hash)]),
    92: ("WorkPackageFailed", _failed("submission_or_share_id")),
    93: ("DuplicateWorkPackage", [("submission_or_share_id", U64), ("core", U16), ("hash", Hash)]),
    94: ("WorkPackageReceived", [("submission_or_share_id", U64), ("core", U16), ("outline", WorkPackageOutline)]),
    95: ("Authorized", [("submission_or_share_id", U64), ("cost", IsAuthorizedCost)]),
    96: ("ExtrinsicDataReceived", _id("submission_or_share_id")),
    97: ("ImportsReceived", _id("submission_or_share_id")),
    98: ("SharingWorkPackage", [("submission_id", U64), ("secondary", Hash)]),
    99: ("WorkPackageSharingFailed", [("submission_id", U64), ("secondary", Hash), ("reason", Reason)]),
    100: ("BundleSent", [("submission_id", U64), ("secondary", Hash)]),
    101: ("Refined", [("submission_or_share_id", U64), ("costs", Seq(RefineCost))]),
    102: ("WorkReportBuilt", [("submission_or_share_id", U64), ("outline", WorkReportOutline)]),
    103: ("WorkReportSignatureSent", _id("share_id")),
    104: ("WorkReportSignatureReceived", [("submission_id", U64), ("secondary", Hash)]),
    105: ("GuaranteeBuilt", [("submission_id", U64), ("outline", GuaranteeOutline)]),
    106: ("SendingGuarantee", [("built_id", U64), ("recipient", Hash)]),
    107: ("GuaranteeSendFailed", _failed("sending_id")),
    108: ("GuaranteeSent", _id("sending_id")),
    109: ("GuaranteesDistributed", _id("submission_id")),
    110: ("ReceivingGuarantee", [("sender", Hash)]),
    111: ("GuaranteeReceiveFailed", _failed("receiving_id")),
    112: ("GuaranteeReceived", [("receiving_id", U64), ("outline", GuaranteeOutline)]),
    113: ("GuaranteeDiscarded", [("outline", GuaranteeOutline), ("reason", GuaranteeDiscardReason)]),
    # Availability distribution
    120: ("SendingShardRequest", [("guarantor", Hash), ("erasure_root", Hash), ("shard", U16)]),
    121: ("ReceivingShardRequest", [("assurer", Hash)]),
    122: ("ShardRequestFailed", _failed("request_id")),
    123: ("ShardRequestSent", _id("request_id")),
    124: ("ShardRequestReceived", [("request_id", U64), ("erasure_root", Hash), ("shard", U16)]),
    125: ("ShardsTransferred", _id("request_id")),
    126: ("DistributingAssurance", [("statement", Struct(("anchor", Hash), ("bitfield", CoreBits())))]),
    127: ("AssuranceSendFailed", [("distributing_id", U64), ("recipient", Hash), ("reason", Reason)]),
    128: ("AssuranceSent", [("distributing_id", U64), ("recipient", Hash)]),
    129: ("AssuranceDistributed", _id("distributing_id")),
    130: ("AssuranceReceiveFailed", [("sender", Hash), ("reason", Reason)]),
    131: ("AssuranceReceived", [("sender", Hash), ("anchor", Hash)]),
    # Bundle recovery
    140: ("SendingBundleShardRequest", [("audit_id", U64), ("assurer", Hash), ("shard", U16)]),
    141: ("ReceivingBundleShardRequest", [("auditor", Hash)]),
    142: ("BundleShardRequestFailed", _failed("request_id")),
    143: ("BundleShardRequestSent", _id("request_id")),
    144: ("BundleShardRequestReceived", [("request_id", U64), ("erasure_root", Hash), ("shard", U16)]),
    145: ("BundleShardTransferred", _id("request_id")),
    146: ("ReconstructingBundle", [("audit_id", U64), ("kind", TrivialKind)]),
    147: ("BundleReconstructed", _id("audit_id")),
    148: ("SendingBundleRequest", [("audit_id", U64), ("guarantor", Hash)]),
    149: ("ReceivingBundleRequest", [("auditor", Hash)]),
    150: ("BundleRequestFailed", _failed("request_id")),
    151: ("BundleRequestSent", _id("request_id")),
    152: ("BundleRequestReceived", [("request_id", U64), ("erasure_root", Hash)]),
    153: ("BundleTransferred", _id("request_id")),
    # Segment recovery
    160: ("WorkPackageHashMapped", [("submission_id", U64), ("work_package_hash", Hash), ("segments_root", Hash)]),
    161: ("SegmentsRootMapped", [("submission_id", U64), ("segments_root", Hash), ("erasure_root", Hash)]),
    162: (
        "SendingSegmentShardRequest",
        [("submission_id", U64), ("assurer", Hash), ("proofs", Bool), ("shards", Seq(Tuple(U16, U16)))],
    ),
    163: ("ReceivingSegmentShardRequest", [("sender", Hash), ("proofs", Bool)]),
    164: ("SegmentShardRequestFailed", _failed("request_id")),
    165: ("SegmentShardRequestSent", _id("request_id")),
    166: ("SegmentShardRequestReceived", [("request_id", U64), ("num", U16)]),
    167: ("SegmentShardsTransferred", _id("request_id")),
    168: ("ReconstructingSegments", [("submission_id", U64), ("segments", Seq(U16)), ("kind", TrivialKind)]),
    169: ("SegmentReconstructionFailed", _failed("reconstructing_id")),
    170: ("SegmentsReconstructed", _id("reconstructing_id")),
    171: ("SegmentVerificationFailed", [("submission_id", U64), ("segments", Seq(U16)), ("reason", Reason)]),
    172: ("SegmentsVerified", [("submission_id", U64), ("segments", Seq(U16))]),
    173: ("SendingSegmentRequest", [("submission_id", U64), ("prev_guarantor", Hash), ("segments", Seq(U16))]),
    174: ("ReceivingSegmentRequest", [("guarantor", Hash)]),
    175: ("SegmentRequestFailed", _failed("request_id")),
    176: ("SegmentRequestSent", _id("request_id")),
    177: ("SegmentRequestReceived", [("request_id", U64), ("num", U16)]),
    178: ("SegmentsTransferred", _id("request_id")),
    # Preimage distribution
    190: ("PreimageAnnouncementFailed", [("peer", Hash), ("announcer", Side), ("reason", Reason)]),
    191: (
        "PreimageAnnounced",
        [("peer", Hash), ("announcer", Side), ("service", U32), ("hash", Hash), ("length", U32)],
    ),
    192: (
        "AnnouncedPreimageForgotten",
        [("service", U32), ("hash", Hash), ("length", U32), ("reason", AnnouncedPreimageForgetReason)],
    ),
    193: ("SendingPreimageRequest", [("recipient", Hash), ("hash", Hash)]),
    194: ("ReceivingPreimageRequest", [("sender", Hash)]),
    195: ("PreimageRequestFailed", _failed("request_id")),
    196: ("PreimageRequestSent", _id("request_id")),
    197: ("PreimageRequestReceived", [("request_id", U64), ("hash", Hash)]),
    198: ("PreimageTransferred", [("request_id", U64), ("length", U32)]),
    199: ("PreimageDiscarded", [("hash", Hash), ("length", U32), ("reason", PreimageDiscardReason)]),
}
