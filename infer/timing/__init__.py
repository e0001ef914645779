"""Where inference time goes: the roofline of the device, the work and measured time of each
component of a step, and the report's text and plots."""
