/* imapd: the IMAP server process. The entry point, imapd_main(), is
 * declared in src/master/kaled.h (the master calls it); this header exists for the module's own
 * files and documents the limits. See docs/imap.md. */
#ifndef KALE_IMAPD_H
#define KALE_IMAPD_H

#include "lib/proc.h"

#endif
