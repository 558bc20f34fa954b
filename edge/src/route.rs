//! Which TokenReview endpoint a request is for, decided once from its path (kube-apiserver
//! appends `?timeout=30s`, so only the path counts); there are no redirects.

/// A TokenReview endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `POST /authenticate`: the default cluster, its client CA `tls.client_ca`.
    Default,
    /// `POST /clusters/{name}/authenticate`: a configured cluster, its client CA
    /// `clusters.{name}.client_ca`.
    Cluster(&'a str),
}

impl<'a> Route<'a> {
    /// The route of `path`, if it is one of the endpoint shapes (whether the cluster is
    /// configured is the handler's question).
    pub fn parse(path: &'a str) -> Option<Self> {
        if path == "/authenticate" {
            return Some(Route::Default);
        }
        path.strip_prefix("/clusters/")?
            .strip_suffix("/authenticate")
            .map(Route::Cluster)
    }

    /// The cluster named in the path; `None` for the default route.
    pub fn cluster(self) -> Option<&'a str> {
        match self {
            Route::Default => None,
            Route::Cluster(name) => Some(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_endpoint_shapes_only() {
        assert_eq!(Route::parse("/authenticate"), Some(Route::Default));
        assert_eq!(
            Route::parse("/clusters/dev/authenticate"),
            Some(Route::Cluster("dev"))
        );
        for other in ["/", "/authenticate/", "/clusters/dev", "/x/authenticate"] {
            assert_eq!(Route::parse(other), None, "{other}");
        }
    }
}
