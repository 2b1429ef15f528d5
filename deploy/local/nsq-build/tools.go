//go:build tools

// Package nsqbuild pins nsqd and nsqlookupd v1.3.0. NSQ's own go.mod carries a replace directive,
// which `go install pkg@version` refuses, so we repeat that replace here and `go build` from this module.
package nsqbuild

import (
	_ "github.com/nsqio/nsq/apps/nsqd"
	_ "github.com/nsqio/nsq/apps/nsqlookupd"
)
