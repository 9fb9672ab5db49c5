#!/bin/sh
echo "{GUEST_POWER_BUTTON_MARKER}" >/dev/console
poweroff -f
