// Debian's zlib1g-dev: used for Whisper's compression-ratio check of decoded text.
#include <zlib.h>
