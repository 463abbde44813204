package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// onceValue is a flag that takes one value: given a second time on the
// command line, it is an error instead of the last value silently
// winning (cobra's way), so `backup --media A --media B` never backs up B
// alone (issue 26, item 1). Lists (--db, --tag, --exclude, …) and
// switches are not wrapped.
type onceValue struct {
	pflag.Value
	first string
	set   bool
}

func (o *onceValue) Set(v string) error {
	if o.set {
		return fmt.Errorf("given twice (%q, then %q): it takes one value", o.first, v)
	}
	if err := o.Value.Set(v); err != nil {
		return err
	}
	o.first, o.set = v, true
	return nil
}

// singleValued are the flag types that hold one value.
var singleValued = map[string]bool{"string": true, "int": true, "int64": true, "uint": true, "uint64": true, "float64": true, "duration": true}

// refuseRepeatedFlags wraps every single-valued flag of c and its
// subcommands in onceValue.
func refuseRepeatedFlags(c *cobra.Command) {
	wrap := func(f *pflag.Flag) {
		if _, done := f.Value.(*onceValue); !done && singleValued[f.Value.Type()] {
			f.Value = &onceValue{Value: f.Value}
		}
	}
	c.Flags().VisitAll(wrap)
	c.PersistentFlags().VisitAll(wrap)
	for _, sub := range c.Commands() {
		refuseRepeatedFlags(sub)
	}
}
