/*
 * bin/meridianctl: sets up libcurl and libsodium and runs the command line
 * in cli/ctl.c. Nothing else lives here, so tests can run every command
 * in-process through mer_ctl_main.
 */
#include <stdio.h>

#include <curl/curl.h>
#include <sodium.h>

#include "cli/ctl.h"

int main(int argc, char **argv)
{
	int rv;

	if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
		fprintf(stderr, "meridianctl: cannot initialise libsodium or "
				"libcurl\n");
		return MER_CTL_EXIT_OTHER;
	}
	rv = mer_ctl_main(argc, argv, stdout, stderr);
	curl_global_cleanup();
	return rv;
}
