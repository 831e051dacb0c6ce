"""The embedded MuJoCo tabletop scene: language-instructed tasks, scripted experts, a simulated robot."""
