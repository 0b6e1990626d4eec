"""Managed (lifecycle) nodes: the ROS 2 node state machine for every vidaction node.

    unconfigured --configure--> inactive --activate--> active --deactivate--> inactive --cleanup--> unconfigured

  construction  declare and validate parameters only (a bad value fails here, naming the parameter)
  configure     acquire: load the model, open the camera, allocate the frame ring, create publishers and
                subscriptions. A failure returns FAILURE with the reason logged: the node stays unconfigured
                and can be configured again (e.g. after the camera is plugged in).
  activate      start the data flow (capture thread, timers); messages are handled and published only now
  deactivate    stop the data flow; resources stay, so activate again is instant
  cleanup       release everything configure acquired
  shutdown      from any state: release what is held

Subclasses implement configure/activate/deactivate/cleanup (plain methods, no lifecycle plumbing) and
register what configure creates with `own()`, so cleanup destroys it. `autostart` (default true) makes a
lone node (`ros2 run`) bring itself up; launch files and the pipeline set it false and bring the graph up
in order from the outside (downstream first), through lifecycle_manager or `bring_up`.
"""
from __future__ import annotations

import threading

from rclpy._rclpy_pybind11 import RCLError
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from ..graph import BRINGUP_ORDER
from ..params import Param, declare

# Composed mode sets it true on embedder, memory and policy: `embedding` and `memory/context` pass between them
# by reference (transport/intra_process.py); the DDS copy goes out only for subscribers outside.
INTRA_PROCESS = Param('intra_process', False, 'composed mode: take embedding / memory/context from the other '
                      'nodes of this process by reference, and publish the DDS copy only for outside subscribers')
INTRA_DISPATCH = Param('intra_process_dispatch', 'inline', 'composed mode (intra_process): where a message handed '
                       'over by reference is handled: inline (on the sending node\'s thread when this node is not '
                       'busy: no executor wake-up; this node\'s callbacks are serialised by a lock) or executor '
                       '(this node\'s executor thread, woken by a guard condition)', choices=('inline', 'executor'))

AUTOSTART = Param('autostart', True, 'configure and activate this node by itself at startup (launch files set '
                  'false and bring the graph up in order with lifecycle_manager)')


class ManagedNode(LifecycleNode):
    PARAMS: list[Param] = []

    def __init__(self, name: str, **kwargs):
        super().__init__(name, **kwargs)
        self.p = declare(self, list(self.PARAMS) + [AUTOSTART])
        self.active = False           # handlers drop messages unless active
        self.configured = False
        self._owned: list = []
        # Serialises this node's callbacks when some run off its executor (intra-process inline hand-over): the
        # data callback, its timers and services, and the transitions that stop the data flow.
        self.callback_lock = threading.RLock()

    # -- what subclasses implement ---------------------------------------------------------------------
    def configure(self) -> None:
        """Acquire resources. Raise with a clear message on failure."""

    def activate(self) -> None:
        """Start the data flow."""

    def deactivate(self) -> None:
        """Stop the data flow; keep resources."""

    def cleanup(self) -> None:
        """Release what configure acquired (entities registered with own() are destroyed afterwards)."""

    # -- helpers -----------------------------------------------------------------------------------------
    def inline_lock(self):
        """The lock an intra-process subscription takes to handle messages on the sender's thread
        (intra_process_dispatch: inline, a parameter of the nodes that declare INTRA_DISPATCH); None: executor."""
        return self.callback_lock if self.p.get('intra_process_dispatch') == 'inline' else None

    def own(self, entity):
        """Register a publisher, subscription, timer, client or service created in configure for cleanup."""
        self._owned.append(entity)
        return entity

    def _destroy_owned(self) -> None:
        from rclpy.publisher import Publisher
        from rclpy.service import Service
        from rclpy.subscription import Subscription
        from rclpy.timer import Timer
        for entity in reversed(self._owned):
            if isinstance(entity, Timer):
                self.destroy_timer(entity)
            elif isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            elif isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            elif isinstance(entity, Service):
                self.destroy_service(entity)
            elif hasattr(entity, 'destroy'):      # intra-process publisher / subscription
                entity.destroy()
        self._owned.clear()

    def _release(self) -> None:
        try:
            self.cleanup()
        finally:
            self._destroy_owned()
            self.configured = False

    # -- the state machine's callbacks -------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self.configure()
        except Exception as err:   # noqa: BLE001 - any failure to acquire leaves the node unconfigured
            self.get_logger().error(f'configure failed: {err}')
            try:
                self._release()
            except Exception as release_err:  # noqa: BLE001
                self.get_logger().error(f'cleanup after the failed configure also failed: {release_err}')
            return TransitionCallbackReturn.FAILURE
        self.configured = True
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        try:
            self.activate()
        except Exception as err:  # noqa: BLE001
            self.get_logger().error(f'activate failed: {err}')
            self.deactivate()
            return TransitionCallbackReturn.FAILURE
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        with self.callback_lock:
            self.active = False
            self.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        with self.callback_lock:
            self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Release everything held, whatever the state (process exit, error). Safe to call twice."""
        with self.callback_lock:
            self._close()

    def _close(self) -> None:
        if self.active:
            self.active = False
            try:
                self.deactivate()
            except RCLError:
                # At process exit rclpy's signal thread shuts the context down at any moment, also between a
                # deactivate's context.ok() check and its last publish; the release below must still happen.
                self.get_logger().warning('deactivated during shutdown: last messages not sent')
        if self.configured:
            self._release()

    def bring_up(self) -> bool:
        """configure + activate from here (autostart, composed mode); False with the reason logged on failure."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS


def bring_up(nodes) -> list[str]:
    """Configure and activate in-process nodes in BRINGUP_ORDER; the names of those that failed. Nodes that
    are already active (autostart, e.g. the optional escalation node) are left as they are."""
    rank = {name: i for i, name in enumerate(BRINGUP_ORDER)}
    failed = []
    for node in sorted(nodes, key=lambda n: rank.get(n.get_name(), len(rank))):
        if isinstance(node, ManagedNode) and not node.active and not node.bring_up():
            failed.append(node.get_name())
    return failed
