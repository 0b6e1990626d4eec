"""Bring-up of a graph of lifecycle nodes in separate processes: configure all, then activate all, in
`node_names` order (downstream first), through each node's lifecycle_msgs/ChangeState service — what
launch files and the launch-free processes mode run beside the four nodes (cf. nav2_lifecycle_manager).

A node that does not come up (service absent within `service_timeout_s`, or a transition that fails, e.g.
a missing model) stops the bring-up: the manager logs which node and why, and exits with code 1 so that
`ros2 launch` / the pipeline take the graph down rather than leave a half pipeline running.
After bring-up the manager stays up (idle) so the process group lives as long as the graph.
"""
from __future__ import annotations

import sys

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from ..params import Param, declare

PARAMS = [
    Param('node_names', ['memory', 'policy', 'embedder', 'camera'],
          'lifecycle nodes to bring up, in order (relative names resolve in this node\'s namespace)'),
    Param('service_timeout_s', 120.0, 'wait this long for each node\'s lifecycle services (model loading '
          'happens in configure, not before)', 0.1, 3600.0),
    Param('transition_timeout_s', 300.0, 'wait this long for one transition (configure loads the model)',
          0.1, 3600.0),
]


class LifecycleManager(Node):
    def __init__(self, name: str = 'lifecycle_manager', **kwargs):
        super().__init__(name, **kwargs)
        self.p = declare(self, PARAMS)

    def _call(self, client, request, timeout: float):
        future = client.call_async(request)
        # An executor on this node's own context (rclpy.spin_until_future_complete would use the default one).
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(self)
        try:
            executor.spin_until_future_complete(future, timeout_sec=timeout)
        finally:
            executor.remove_node(self)
            executor.shutdown()
        return future.result() if future.done() else None

    def state_of(self, node_name: str, timeout: float = 5.0) -> str:
        client = self.create_client(GetState, f'{node_name}/get_state')
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                return 'unknown'
            response = self._call(client, GetState.Request(), timeout)
            return response.current_state.label if response else 'unknown'
        finally:
            self.destroy_client(client)

    def transition(self, node_name: str, transition_id: int, label: str) -> bool:
        client = self.create_client(ChangeState, f'{node_name}/change_state')
        try:
            if not client.wait_for_service(timeout_sec=self.p['service_timeout_s']):
                self.get_logger().error(f'{node_name}: no lifecycle service within '
                                        f"{self.p['service_timeout_s']} s (node not started?)")
                return False
            response = self._call(client, ChangeState.Request(transition=Transition(id=transition_id)),
                                  self.p['transition_timeout_s'])
            if response is None:
                self.get_logger().error(f'{node_name}: {label} did not finish within '
                                        f"{self.p['transition_timeout_s']} s")
                return False
            if not response.success:
                self.get_logger().error(f'{node_name}: {label} failed (the node logged why)')
                return False
            self.get_logger().info(f'{node_name}: {label}d')
            return True
        finally:
            self.destroy_client(client)

    def bring_up(self) -> bool:
        names = list(self.p['node_names'])
        for transition_id, label in ((Transition.TRANSITION_CONFIGURE, 'configure'),
                                     (Transition.TRANSITION_ACTIVATE, 'activate')):
            for name in names:
                if not self.transition(name, transition_id, label):
                    return False
        self.get_logger().info(f'all up: {names}')
        return True


def main(args=None) -> int:
    from .runtime import listen_to_sigint
    listen_to_sigint()   # see there: a background start leaves SIGINT ignored
    rclpy.init(args=sys.argv if args is None else args)
    node = None
    try:
        node = LifecycleManager()
        if not node.bring_up():
            return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except ValueError as err:
        rclpy.logging.get_logger('lifecycle_manager').fatal(f'startup failed: {err}')
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
