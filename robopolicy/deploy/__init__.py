"""The deployment daemon: an HTTP control API over the runtime, episode recording, and its client."""
