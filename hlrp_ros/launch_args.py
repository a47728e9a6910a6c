"""Launch-argument parsing that the launch file uses and the tests check without ``launch`` installed."""

from __future__ import annotations


def camera_parameters(text: str) -> dict[str, list[str]]:
    """policy_node's ``camera_topics`` / ``camera_names`` from a ``cameras`` launch argument.

    The argument maps topics to model camera names, comma separated:
    ``/front/image_raw=top,/wrist/image_raw/compressed=wrist``. Empty -> ``{}`` (the parameter files decide).

    Raises:
        ValueError: an entry without ``=``, an empty topic or name, or a topic or name given twice.
    """
    text = text.strip()
    if not text:
        return {}
    topics, names = [], []
    for entry in text.split(","):
        topic, sep, name = (part.strip() for part in entry.partition("="))
        if not sep or not topic or not name:
            raise ValueError(f"cameras: {entry.strip()!r} is not topic=name "
                             f"(e.g. cameras:=/front/image_raw=top,/wrist/image_raw=wrist)")
        topics.append(topic)
        names.append(name)
    for what, values in (("topic", topics), ("camera name", names)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"cameras: {what} {repeated[0]!r} given twice")
    return {"camera_topics": topics, "camera_names": names}
