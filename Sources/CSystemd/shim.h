// Debian's libsystemd-dev: sd_notify, sd_watchdog_enabled and sd_listen_fds.
#include <systemd/sd-daemon.h>
