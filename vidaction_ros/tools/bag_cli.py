"""`vidaction-bag` / `ros2 run vidaction_ros vidaction_bag`: make, inspect and play rosbag2 bags of camera
frames without a rosbag2 install.

  vidaction-bag from-video VIDEO OUT_BAG [--topic T] [--compressed] [--width W] [--start-s S] [--end-s E]
                                         [--step N] [--storage mcap|sqlite3] [--time-origin S|now] ...
  vidaction-bag info BAG [--json]
  vidaction-bag play BAG [--rate R] [--loop] [--clock [HZ]] [--topics T ...] [--wait-for-subscribers N]
                         [--ros-args -r /image_raw:=/camera/image ...]

from-video and info need no ROS at all (rosbags + OpenCV); play starts a real rclpy node (bag_player).
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our arguments, ROS arguments): everything from '--ros-args' up to a closing '--' goes to rclpy."""
    ours, ros = [], []
    inside = False
    for arg in argv:
        if arg == '--ros-args':
            inside = True
            ros.append(arg)
        elif inside and arg == '--':
            inside = False
            ros.append(arg)
        elif inside:
            ros.append(arg)
        else:
            ours.append(arg)
    return ours, ros


def _origin(text: str) -> float:
    if text == 'now':
        return time.time()
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected seconds or "now", got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {value}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='vidaction-bag', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)

    make = sub.add_parser('from-video', help='write a video file into a new rosbag2 bag of image messages')
    make.add_argument('video', help='video file readable by OpenCV')
    make.add_argument('out_bag', help='bag directory to create (must not exist)')
    make.add_argument('--topic', help='topic name (default /image_raw, or /image_raw/compressed with --compressed)')
    make.add_argument('--compressed', action='store_true',
                      help='sensor_msgs/CompressedImage instead of sensor_msgs/Image (bgr8)')
    make.add_argument('--codec', choices=('jpeg', 'png'), default='jpeg', help='compressed payload (default jpeg)')
    make.add_argument('--jpeg-quality', type=int, default=90, help='JPEG quality 1-100 (default 90)')
    make.add_argument('--width', type=int, help='downscale to this width, keeping the aspect ratio')
    make.add_argument('--start-s', type=float, default=0.0, help='first media time to include, seconds')
    make.add_argument('--end-s', type=float, help='media time to stop before, seconds (default: the end)')
    make.add_argument('--step', type=int, default=1, help='keep every N-th frame (10 fps with --step 2: 5 fps)')
    make.add_argument('--time-origin', type=_origin, default=0.0,
                      help='seconds added to media time for header stamps and bag times (default 0: stamps '
                           'are media time); "now" for the current wall clock')
    make.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='storage (default mcap)')
    make.add_argument('--frame-id', default='camera', help='header.frame_id (default camera)')
    make.add_argument('--fps', type=float, help="override the video's frame rate")

    info = sub.add_parser('info', help='topics, types, counts and duration of a bag')
    info.add_argument('bag')
    info.add_argument('--json', action='store_true', help='machine-readable output')

    play = sub.add_parser('play', help='publish a bag with rclpy at its recorded pace (a `ros2 bag play` '
                                       'stand-in); ROS arguments go after --ros-args')
    play.add_argument('bag')
    play.add_argument('--rate', type=float, default=1.0, help='playback speed factor (default 1; 0 = as fast '
                                                              'as possible)')
    play.add_argument('--loop', action='store_true', help='start again at the end, until interrupted')
    play.add_argument('--clock', type=float, nargs='?', const=40.0, default=0.0, metavar='HZ',
                      help='publish /clock (rosgraph_msgs/Clock) at HZ (default 40 when given) for use_sim_time')
    play.add_argument('--topics', nargs='+', help='play only these topics')
    play.add_argument('--qos-depth', type=int, default=10, help='keep-last depth of the reliable publishers')
    play.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                      help='hold playback until every topic has N matched subscribers (default 0: no wait)')
    play.add_argument('--wait-timeout', type=float, default=30.0,
                      help='seconds to wait for subscribers before playing anyway (default 30)')
    return parser


def _from_video(args) -> int:
    from ..ingest.bags import BagError
    from .bag_writer import VideoToBag, write_video_bag
    options = VideoToBag(topic=args.topic, compressed=args.compressed, codec=args.codec,
                         jpeg_quality=args.jpeg_quality, width=args.width, start_s=args.start_s, end_s=args.end_s,
                         step=args.step, time_origin_s=args.time_origin, storage=args.storage,
                         frame_id=args.frame_id, fps=args.fps)
    try:
        result = write_video_bag(args.video, args.out_bag, options)
    except BagError as err:
        print(f'vidaction-bag: {err}', file=sys.stderr)
        return 2
    first, last = result.first_stamp_ns / 1e9, result.last_stamp_ns / 1e9
    print(f'wrote {result.count} {result.msgtype} messages ({result.width}x{result.height}) on {result.topic}, '
          f'stamps {first:.3f}-{last:.3f} s, to {result.path} ({result.size_bytes / 1e6:.2f} MB)')
    return 0


def _info(args) -> int:
    from ..ingest.bags import BagError, bag_info, format_info
    try:
        info = bag_info(args.bag)
    except BagError as err:
        print(f'vidaction-bag: {err}', file=sys.stderr)
        return 2
    print(json.dumps(info.as_dict(), indent=2) if args.json else format_info(info))
    return 0


def _play(args, ros_args: list[str]) -> int:
    from .bag_player import run
    return run(args.bag, ros_args=[sys.argv[0] if sys.argv else 'vidaction-bag', *ros_args],
               topics=args.topics, rate=args.rate, loop=args.loop, clock_hz=args.clock or 0.0,
               qos_depth=args.qos_depth, wait_for_subscribers=args.wait_for_subscribers,
               wait_timeout_s=args.wait_timeout)


def main(argv: list[str] | None = None) -> int:
    ours, ros_args = split_ros_args(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(ours)
    if args.command == 'from-video':
        return _from_video(args)
    if args.command == 'info':
        return _info(args)
    return _play(args, ros_args)


if __name__ == '__main__':
    raise SystemExit(main())
