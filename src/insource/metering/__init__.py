"""insource.metering."""
