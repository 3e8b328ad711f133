"""Pure-DDS transport on ``cyclonedds``: talks to ROS 2 nodes running ``rmw_cyclonedds_cpp``
from a machine without ROS 2.

ROS 2's wire conventions, reproduced here: topic ``/foo`` is DDS topic ``rt/foo``; type
``sensor_msgs/msg/Image`` is DDS type ``sensor_msgs::msg::dds_::Image_``; samples are XCDR1
(plain CDR, little endian); topics are keyless. The IDL types are generated from the dataclasses
in ``messages``. ``uint8[]`` fields are declared ``sequence<uint8>`` (so type information
matches ROS 2's) but serialised as one raw byte block: cyclonedds' element-by-element
sequence path costs ~50 ms for a 640x480 RGB image, the raw block ~0.3 ms, same bytes.

Robot side (ROS 2): ``export RMW_IMPLEMENTATION=rmw_cyclonedds_cpp`` (stock Humble/Jazzy use
Fast DDS, which is not guaranteed to talk to Cyclone), the same ``ROS_DOMAIN_ID`` on both
machines, and if discovery must avoid multicast or stay on one interface, the same kind of
``CYCLONEDDS_URI`` file on both (``loopback_config`` shows the shape).
"""

from __future__ import annotations

import os
import threading
import types as pytypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vla_gym.sim2real.messages import (
    RosField,
    dds_typename,
    from_foreign,
    ros_fields,
    ros_type,
    to_foreign,
)
from vla_gym.sim2real.transports.base import (
    INSTALL_HINT,
    QOS_DEFAULT,
    Publisher,
    Qos,
    Subscription,
    Transport,
    check_topic,
    log,
)

M = TypeVar("M")
_TYPES: dict[Any, Any] = {}
_TYPES_LOCK = threading.RLock()
_DOMAINS: dict[int, Any] = {}


def _cyclonedds() -> Any:
    try:
        import cyclonedds.idl  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"the dds transport needs cyclonedds: {INSTALL_HINT}") from exc
    import cyclonedds

    return cyclonedds


def loopback_config(interface: str = "lo", max_participants: int = 40) -> str:
    """A Cyclone config for one host: unicast discovery on ``interface`` only.

    Loopback has no multicast, so peers are found by probing participant ports on 127.0.0.1.
    The larger socket buffer keeps fragmented camera frames from being dropped in bursts.
    """
    return (
        "<CycloneDDS><Domain Id='any'><General>"
        f"<Interfaces><NetworkInterface name='{interface}' multicast='false'/></Interfaces>"
        "<AllowMulticast>false</AllowMulticast><MaxMessageSize>65500B</MaxMessageSize>"
        "</General><Internal><SocketReceiveBufferSize min='default' max='4MB'/></Internal>"
        "<Discovery><ParticipantIndex>auto</ParticipantIndex>"
        f"<MaxAutoParticipantIndex>{max_participants}</MaxAutoParticipantIndex>"
        "<Peers><Peer address='127.0.0.1'/></Peers></Discovery></Domain></CycloneDDS>"
    )


# -- IDL types --------------------------------------------------------------------------------
def idl_type(cls: Any) -> Any:
    """The cyclonedds IdlStruct for message class ``cls`` (generated once, cached)."""
    with _TYPES_LOCK:
        if cls not in _TYPES:
            _TYPES[cls] = _build_idl_type(cls)
        return _TYPES[cls]


def _build_idl_type(cls: Any) -> Any:
    _cyclonedds()
    from cyclonedds.idl import IdlStruct

    fields = ros_fields(cls)
    body: dict[str, Any] = {"__annotations__": {f.name: _idl_hint(f) for f in fields},
                            "__module__": __name__}
    raw = [f.name for f in fields if f.kind == "bytes"]
    if raw:
        body["serialize"] = _presized_serialize(raw)
    idl_cls = pytypes.new_class(f"{cls.__name__}_", (IdlStruct,),
                                {"typename": dds_typename(cls)}, lambda ns: ns.update(body))
    idl_cls = dataclass(idl_cls)
    if raw:
        _use_raw_bytes(idl_cls, raw)
    return idl_cls


def _idl_hint(f: RosField) -> Any:
    from cyclonedds.idl import types

    t: Any = types  # sequence[...] / array[...] are runtime constructs mypy cannot index

    prim = {"int32": t.int32, "uint32": t.uint32, "uint8": t.uint8, "float64": t.float64,
            "bool": bool}
    if f.kind == "primitive":
        return prim[f.element]
    if f.kind == "string":
        return str
    if f.kind == "bytes":
        return t.sequence[t.uint8]
    if f.kind == "sequence":
        return t.sequence[prim[f.element]]
    if f.kind == "array":
        return t.array[prim[f.element], f.length]
    if f.kind == "string_sequence":
        return t.sequence[str]
    if f.kind == "struct":
        return idl_type(f.element)
    return t.sequence[idl_type(f.element)]


def _use_raw_bytes(idl_cls: Any, names: list[str]) -> None:
    """Swap the element-wise ``sequence<uint8>`` machine for cyclonedds' raw-bytes machine.

    Same CDR bytes (uint32 length + octets); relies on cyclonedds internals, so it checks what
    it patches and falls back (slow but correct) if those internals ever change.
    """
    try:
        from cyclonedds.idl._machinery import BytesMachine, StructMachine

        idl = idl_cls.__idl__
        idl.populate()
        for machine in (idl.v1_machine, idl.v2_machine):
            if not isinstance(machine, StructMachine):
                raise TypeError(type(machine).__name__)
            for name in names:
                machine.members_machines[name] = BytesMachine()
    except Exception as exc:  # pragma: no cover - only with a different cyclonedds
        log.warning("raw-bytes image path unavailable (%s); images serialise slowly", exc)


_scratch = threading.local()


def _scratch_buffer(need: int) -> Any:
    """This thread's reusable buffer of at least ``need`` bytes (None: let cyclonedds size it,
    should its private Buffer class ever move)."""
    if getattr(_scratch, "size", 0) < need:
        try:
            from cyclonedds.idl._support import Buffer
        except ImportError:  # pragma: no cover - only with a different cyclonedds
            return None
        _scratch.size = 1 << (need - 1).bit_length()
        _scratch.buffer = Buffer(bytes(_scratch.size))
    return _scratch.buffer


def _presized_serialize(raw: list[str]) -> Any:
    """``serialize`` that writes into a buffer already big enough for the byte fields.

    cyclonedds starts from 512 bytes and doubles, copying each time: 1.8 ms for a 640x480
    frame instead of 0.1 ms. One scratch buffer per thread, grown to a power of two.
    """

    def serialize(self: Any, buffer: Any = None, endianness: Any = None,
                  use_version_2: bool | None = None) -> bytes:
        if buffer is None:
            buffer = _scratch_buffer(1024 + sum(len(getattr(self, name)) for name in raw))
        return self.__idl__.serialize(self, buffer=buffer, endianness=endianness,
                                      use_version_2=use_version_2)

    return serialize


def to_idl(msg: Any) -> Any:
    return to_foreign(msg, idl_type, list)


# -- transport --------------------------------------------------------------------------------
def _qos(qos: Qos) -> Any:
    from cyclonedds.core import Policy
    from cyclonedds.core import Qos as CQos
    from cyclonedds.util import duration

    reliability = (Policy.Reliability.Reliable(duration(milliseconds=100)) if qos.reliable
                   else Policy.Reliability.BestEffort)
    durability = (Policy.Durability.TransientLocal if qos.transient_local
                  else Policy.Durability.Volatile)
    return CQos(reliability, durability, Policy.History.KeepLast(qos.depth),
                Policy.DataRepresentation(use_cdrv0_representation=True))


def domain_id_from_env() -> int:
    value = os.environ.get("ROS_DOMAIN_ID", "0").strip() or "0"
    if not value.isdigit() or not 0 <= int(value) <= 232:
        raise ValueError(f"ROS_DOMAIN_ID must be an integer in [0, 232], got {value!r}")
    return int(value)


class _DdsPublisher(Publisher[M]):
    def __init__(self, transport: DdsTransport, topic: str, msg_type: type[M], writer: Any):
        super().__init__(topic, msg_type)
        self._transport, self._writer = transport, writer

    def publish(self, msg: M) -> None:
        if self._transport.closed:
            return
        if not isinstance(msg, self.msg_type):
            log.error("topic %s: refusing to publish %s (topic type %s)", self.topic,
                      type(msg).__name__, ros_type(self.msg_type))
            return
        self._writer.write(to_idl(msg))

    def matched(self) -> int:
        """How many readers this writer has discovered (for waiting on discovery)."""
        return len(self._writer.get_matched_subscriptions())


class DdsTransport(Transport):
    """One DDS participant; ``domain_id`` defaults to ``ROS_DOMAIN_ID`` (else 0).

    ``config`` (Cyclone XML) applies to this process's ``domain_id`` and must be given before
    any participant of that domain exists; otherwise Cyclone reads ``CYCLONEDDS_URI``.
    """

    name = "dds"

    def __init__(self, domain_id: int | None = None, config: str | None = None) -> None:
        super().__init__()
        _cyclonedds()
        from cyclonedds.domain import Domain, DomainParticipant

        self.domain_id = domain_id_from_env() if domain_id is None else int(domain_id)
        if config is not None and self.domain_id not in _DOMAINS:
            _DOMAINS[self.domain_id] = Domain(self.domain_id, config)
        self._participant = DomainParticipant(self.domain_id)
        self._topics: dict[str, Any] = {}
        self._readers: list[Any] = []
        self._writers: list[Any] = []
        self._lock = threading.Lock()

    def _topic(self, topic: str, msg_type: type) -> Any:
        from cyclonedds.topic import Topic

        with self._lock:
            if topic not in self._topics:
                self._topics[topic] = Topic(self._participant, "rt" + topic, idl_type(msg_type))
            return self._topics[topic]

    def subscribe(self, topic: str, msg_type: type[M], qos: Qos = QOS_DEFAULT,
                  callback: Callable[[M], None] | None = None) -> Subscription[M]:
        from cyclonedds.core import Listener
        from cyclonedds.sub import DataReader

        topic = check_topic(topic, msg_type)
        sub: Subscription[M] = Subscription(topic, msg_type, callback)
        idl_cls, depth = idl_type(msg_type), qos.depth
        holder: dict[str, Any] = {}
        drain_lock = threading.Lock()

        def drain(_: Any = None) -> None:
            # Cyclone may call before DataReader() returns (latched data); the reader it passes
            # is then None, so use our own reference and drain once more after construction.
            reader = holder.get("reader")
            if reader is None:
                return
            with drain_lock:
                try:
                    samples = reader.take(N=depth)
                except Exception as exc:  # malformed bytes from a peer
                    log.error("topic %s: could not read a sample: %s", topic, exc)
                    return
                for sample in samples:
                    if isinstance(sample, idl_cls):
                        sub.deliver(from_foreign(sample, msg_type))

        reader = DataReader(self._participant, self._topic(topic, msg_type), qos=_qos(qos),
                            listener=Listener(on_data_available=drain))
        holder["reader"] = reader
        drain()
        with self._lock:
            self._readers.append(reader)
        return sub

    def publisher(self, topic: str, msg_type: type[M], qos: Qos = QOS_DEFAULT) -> Publisher[M]:
        from cyclonedds.pub import DataWriter

        topic = check_topic(topic, msg_type)
        writer = DataWriter(self._participant, self._topic(topic, msg_type), qos=_qos(qos))
        with self._lock:
            self._writers.append(writer)
        return _DdsPublisher(self, topic, msg_type, writer)

    def close(self) -> None:
        """Delete readers first (their listeners stop), then writers and the participant."""
        if self.closed:
            return
        super().close()
        with self._lock:
            entities = [*self._readers, *self._writers, *self._topics.values(),
                        self._participant]
            self._readers, self._writers, self._topics = [], [], {}
        for entity in entities:
            try:
                entity.__del__()
            except Exception as exc:  # pragma: no cover - best effort at shutdown
                log.debug("dds close: %s", exc)
