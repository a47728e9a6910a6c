"""Start, save and discard recorder_node episodes from a terminal (one key and Enter per command).

    python -m hlrp_ros.tools.record_keys            # talks to /recorder_node
    python -m hlrp_ros.tools.record_keys --node /my_recorder

Keys: ``s`` start, ``w`` save (write), ``d`` discard, ``q`` quit. Each answer of the recorder is
printed as it comes; the tool only calls the node's ``std_srvs/Trigger`` services, so the same can
be done with ``ros2 service call <node>/start std_srvs/srv/Trigger``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

COMMANDS = {"s": "start", "w": "save", "d": "discard"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="/recorder_node", help="the recorder's node name (with namespace)")
    parser.add_argument("--timeout", type=float, default=30.0, help="s to wait for the service / an answer")
    args = parser.parse_args(argv)
    import rclpy
    from std_srvs.srv import Trigger

    rclpy.init()
    node = rclpy.create_node("record_keys")
    clients = {key: node.create_client(Trigger, f"{args.node.rstrip('/')}/{name}") for key, name in COMMANDS.items()}
    print("keys: s start, w save, d discard, q quit (then Enter)", flush=True)
    code = 0
    try:
        for line in sys.stdin:
            key = line.strip().lower()[:1]
            if key == "q":
                break
            if key not in clients:
                print(f"unknown key {key!r}: s start, w save, d discard, q quit", flush=True)
                continue
            client = clients[key]
            if not client.wait_for_service(timeout_sec=args.timeout):
                print(f"{COMMANDS[key]}: no service {client.srv_name} (is recorder_node running?)", flush=True)
                code = 1
                continue
            future = client.call_async(Trigger.Request())
            rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
            if not future.done():
                print(f"{COMMANDS[key]}: no answer within {args.timeout:g} s", flush=True)
                code = 1
                continue
            result = future.result()
            print(f"{COMMANDS[key]}: {'ok' if result.success else 'refused'}: {result.message}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
