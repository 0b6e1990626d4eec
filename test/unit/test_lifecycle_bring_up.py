"""In-process bring-up (composed mode, the demo): nodes in BRINGUP_ORDER, downstream first; a node that
brought itself up (autostart, e.g. the optional escalation node) is left alone instead of failing a second
configure."""
import rclpy
from rclpy.parameter import Parameter

from vidaction_ros.nodes.lifecycle import ManagedNode, bring_up


class Recorder(ManagedNode):
    order: list = []

    def __init__(self, name, autostart):
        super().__init__(name, parameter_overrides=[Parameter('autostart', value=autostart)],
                         context=Recorder.context)
        if self.p['autostart']:
            self.bring_up()

    def configure(self):
        Recorder.order.append(self.get_name())


def test_bring_up_goes_downstream_first_and_leaves_active_nodes_alone():
    Recorder.context = rclpy.Context()
    rclpy.init(context=Recorder.context)
    Recorder.order = []
    try:
        nodes = [Recorder(name, autostart=False) for name in ('camera', 'embedder', 'memory', 'policy')]
        escalation = Recorder('escalation', autostart=True)
        assert escalation.active and Recorder.order == ['escalation']
        assert bring_up(nodes + [escalation]) == []
        # memory and policy listen before the embedder and the camera send; escalation configured once only.
        assert Recorder.order == ['escalation', 'memory', 'policy', 'embedder', 'camera']
        assert all(n.active for n in nodes + [escalation])
        for node in nodes + [escalation]:
            node.close()
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=Recorder.context)
