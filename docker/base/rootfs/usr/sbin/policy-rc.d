#!/bin/sh
# Package scripts must not start services while an image is built: exit code 101 tells
# invoke-rc.d that the action is forbidden.
exit 101
