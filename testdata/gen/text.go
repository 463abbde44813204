package main

import (
	"strings"
	"unicode/utf8"
)

// vocabulary is a small chat vocabulary, most frequent first; words are
// drawn Zipf-distributed so the text compresses like real chats.
var vocabulary = strings.Fields(`
	i you the to a and it is that ok yes no haha lol we me my so what
	are for in do be have on just not was this can at be with when how
	good you're i'm it's don't see tomorrow today later now time home
	come go going get got know think want need love thanks thank
	please sorry great nice cool sure maybe really well oh hey hi
	morning night tonight weekend work back later soon still already
	here there where who why let's call text send sent pic photo video
	dinner lunch coffee beer train bus car late early minutes hour
	ja nein doch gut danke bitte bis morgen heute abend schon noch mal
	gleich später wann wo wer was wie genau super klar okay na ach so
	mum dad kids school birthday party cake present gift holiday trip
	flight hotel beach weather rain sun cold hot tired hungry happy
	game match won lost score team football pizza pasta shopping
	supermarket milk bread eggs need buy bring forgot remember
	meeting boss office project deadline email document file printed
	doctor appointment feeling better sick cough medicine pharmacy
	movie series episode watched watching netflix book reading music
	concert tickets price euro expensive cheap free paid pay send money
	love miss hug kiss xx <3 omg wow yay ugh hmm yeah yep nope idk btw
	tbh asap brb gn gm np ty
	😂 ❤️ 👍 😍 🙏 😊 😭 🎉 😘 🔥 😅 🤔 👌 🙈 💪 🥳
`)

var shortReplies = []string{
	"ok", "Ok 👍", "haha", "😂😂😂", "yes", "no", "ja", "Danke!", "thanks!",
	"see you", "on my way", "Bin unterwegs", "👍", "❤️", "lol", "sure", "k",
	"Gute Nacht", "good night 😘", "coming", "5 min", "call me", "?",
}

// sentence makes one chat message of Zipf-drawn words.
func (g *dbGen) sentence() string {
	if g.r.IntN(5) == 0 {
		return shortReplies[g.r.IntN(len(shortReplies))]
	}
	var b strings.Builder
	parts := 1
	if g.r.IntN(4) == 0 {
		parts += 1 + g.r.IntN(2)
	}
	for p := range parts {
		if p > 0 {
			b.WriteByte(' ')
		}
		n := 1 + int(g.r.ExpFloat64()*7)
		for i := range n {
			w := vocabulary[g.words.Uint64()]
			if i == 0 {
				// Capitalise the first word (ASCII letters only).
				if r, size := utf8.DecodeRuneInString(w); r >= 'a' && r <= 'z' {
					b.WriteRune(r - 'a' + 'A')
					w = w[size:]
				}
			} else {
				b.WriteByte(' ')
			}
			b.WriteString(w)
		}
		switch g.r.IntN(8) {
		case 0, 1, 2:
			b.WriteByte('.')
		case 3:
			b.WriteByte('!')
		case 4:
			b.WriteByte('?')
		case 5:
			b.WriteString(" 😂")
		}
	}
	if g.r.IntN(200) == 0 {
		b.WriteString(" https://maps.app.goo.gl/")
		for range 17 {
			b.WriteByte(hexDigits[g.r.IntN(16)])
		}
	}
	return b.String()
}
