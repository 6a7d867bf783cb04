// Debian's libasound2-dev: the ALSA PCM API used for microphone capture.
#include <alsa/asoundlib.h>
