package auth

import (
	"github.com/nats-io/jwt/v2"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/token"
)

// Permissions returns what an identity with claims c may publish and
// subscribe to under scheme s:
//
//   - a worker publishes its own heartbeat subject and subscribes to nothing;
//   - a hive publishes its own heartbeat and subscribes to its own workers';
//   - a viewer publishes only the JetStream API requests that read the
//     registry buckets and the event history, and subscribes to beats,
//     events and replies.
//
// No role may write a bucket or call any other $JS.API request: that is the
// queens' alone (they connect as QueenUser, outside the callout).
func Permissions(s subjects.Scheme, c token.Claims) jwt.Permissions {
	var p jwt.Permissions
	switch c.Role {
	case token.RoleWorker:
		p.Pub.Allow.Add(s.Worker(c.Hive, c.Worker))
		p.Sub.Deny.Add(">")
	case token.RoleHive:
		p.Pub.Allow.Add(s.Hive(c.Hive))
		p.Sub.Allow.Add(s.HiveWorkers(c.Hive))
	case token.RoleViewer:
		for _, b := range []string{s.WorkersBucket(), s.HivesBucket(), s.QueensBucket()} {
			st := "KV_" + b
			p.Pub.Allow.Add(
				"$JS.API.STREAM.INFO."+st,
				"$JS.API.CONSUMER.CREATE."+st+".>", "$JS.API.CONSUMER.DELETE."+st+".>",
				"$JS.API.DIRECT.GET."+st+".>", "$JS.API.STREAM.MSG.GET."+st,
				"$JS.API.CONSUMER.INFO."+st+".>", "$JS.FC."+st+".>")
		}
		// the event history: an ordered pull consumer (rbee watch --since, rbee events)
		ev := s.EventsStream()
		p.Pub.Allow.Add("$JS.API.STREAM.INFO."+ev, "$JS.API.CONSUMER.CREATE."+ev+".>", "$JS.API.CONSUMER.DELETE."+ev+".>",
			"$JS.API.CONSUMER.INFO."+ev+".>", "$JS.API.CONSUMER.MSG.NEXT."+ev+".>", "$JS.FC."+ev+".>")
		p.Sub.Allow.Add(s.All(), s.AllEvents(), "_INBOX.>")
	default:
		p.Pub.Deny.Add(">")
		p.Sub.Deny.Add(">")
	}
	return p
}
