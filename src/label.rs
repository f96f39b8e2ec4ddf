//! Enums whose values each have one fixed name: the string shown in the
//! status JSON, in logs and as a metric label value.
//!
//! [`label_enum!`] writes the enum together with its complete value list
//! (`ALL`), so a metric can pre-register every label value from the start
//! and no value can be forgotten there: adding a variant adds it to `ALL`.

/// Declares `enum Name { Variant => "name", ... }` with `ALL`, `as_str`,
/// `from_name`, `Display`, serde (as the name) and prometheus-client's
/// `EncodeLabelValue`.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name (status JSON, logs, metric label).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }

            /// The value of that name, if there is one.
            pub fn from_name(name: &str) -> Option<$name> {
                match name {
                    $( $label => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // pad: widths in tables (`{:<7}`) apply.
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let name = <String as serde::Deserialize>::deserialize(d)?;
                $name::from_name(&name).ok_or_else(|| {
                    serde::de::Error::unknown_variant(&name, &[$($label),+])
                })
            }
        }

        impl prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder,
            ) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}
pub(crate) use label_enum;

#[cfg(test)]
mod tests {
    label_enum! {
        /// A test enum.
        pub enum Colour {
            Red => "red",
            /// Doc comments on variants are kept.
            DarkBlue => "dark_blue",
        }
    }

    #[test]
    fn names_round_trip_through_serde_and_labels() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::DarkBlue]);
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
        assert_eq!(format!("[{:<5}]", Colour::Red), "[red  ]");
        assert_eq!(Colour::from_name("red"), Some(Colour::Red));
        assert_eq!(Colour::from_name("Red"), None);
        assert_eq!(
            serde_json::to_string(&Colour::ALL).unwrap(),
            r#"["red","dark_blue"]"#
        );
        let back: Vec<Colour> = serde_json::from_str(r#"["dark_blue","red"]"#).unwrap();
        assert_eq!(back, vec![Colour::DarkBlue, Colour::Red]);
        let err = serde_json::from_str::<Colour>(r#""green""#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `green`"), "{err}");
    }
}
